// Checkout page: create the order, open WeChat Pay, then trust only the server's status.
// ES5 syntax and Promise only, so it needs neither "将 JS 编译成 ES5" nor 增强编译.
var api = require('../../api.js')
var config = require('../../config.js')
var money = require('../../money.js')

// What this demo puts in the cart. The prices are for display only: prepare prices the
// order from its own catalog, and the total it answers is the one shown once ordered.
// These match the products `make run` loads (devtools/local_stack.py).
var CART = [
  {sku: 'A1', name: 'Oolong tea 250g', quantity: 2, price: 1990},
  {sku: 'B2', name: 'Moon cake', quantity: 1, price: 1288},
]

// Status polling after the payment sheet closes: 1 s, 2 s, 3 s ... between checks, and
// no further check once the waits would pass 60 s. Then "Check again" starts over.
var POLL_STEP_MS = 1000
var POLL_BUDGET_MS = 60000

var BUSY = {creating: true, paying: true}
var FINAL = {SUCCESS: true, REFUND: true, CLOSED: true, PAYERROR: true}
var STATUS_WORDS = {
  NOTPAY: 'not paid yet',
  SUCCESS: 'paid',
  REFUND: 'paid, then refunded',
  CLOSED: 'closed without payment',
  PAYERROR: 'payment failed',
}

function displayLines(lines) {
  return lines.map(function (line) {
    return {
      sku: line.sku,
      name: line.name,
      quantity: line.quantity,
      unitText: money.yuan(line.price),
      lineText: money.yuan(line.quantity * line.price),
    }
  })
}

Page({
  data: {
    configured: config.configured,
    cart: displayLines(CART),
    cartTotalText: money.yuan(money.total(CART)),
    // idle | creating | paying | checking | unconfirmed | paid | closed | error
    state: 'idle',
    note: '', // what happened last (e.g. the payment was cancelled)
    statusText: '', // the polling line: "Checking payment… (attempt n)"
    errorText: '', // the server's human message, never its code
    attempt: 0,
    order: null, // {outTradeNo, totalText, payStatus, statusWord, lines, priceChanged}
    showCheckout: true,
    checkoutLabel: 'Pay',
    showPayAgain: false,
    showCheckAgain: false,
  },

  onLoad: function () {
    this.pendingKey = null // idempotencyKey of the checkout attempt under way
    this.orderToken = null
    this.payment = null
    this.expiresAt = 0
    this.pollRun = 0
    this.pollTimer = null
    this.refreshButtons()
  },

  onUnload: function () {
    this.stopPolling()
  },

  onPullDownRefresh: function () {
    if (this.data.order && !FINAL[this.data.order.payStatus]) this.startPolling('Checking again…')
    wx.stopPullDownRefresh()
  },

  // "Pay" (a new checkout attempt) or "New order" after a paid or closed one.
  onCheckout: function () {
    if (BUSY[this.data.state]) return
    this.stopPolling()
    // A fresh key per checkout attempt; a retry after the create call itself failed
    // (no order came back) is the same attempt and reuses it, so it cannot make two orders.
    if (!this.pendingKey) this.pendingKey = api.newIdempotencyKey()
    var sent = CART.map(function (line) {
      return {sku: line.sku, name: line.name, quantity: line.quantity, price: line.price}
    })
    this.orderToken = null
    this.payment = null
    this.update({state: 'creating', order: null, note: '', statusText: 'Creating the order…', errorText: ''})
    var self = this
    api.createOrder(sent.map(function (line) {
      return {sku: line.sku, quantity: line.quantity}
    }), this.pendingKey).then(function (order) {
      self.pendingKey = null
      self.takeOrder(order, sent)
      if (order.payStatus === 'NOTPAY' && order.payment) self.pay()
      else self.startPolling('')
    }, function (err) {
      if (err.code === 'ORDER_ALREADY_PAID' && err.outTradeNo && err.orderToken) {
        // This attempt's order was paid already: show it from the server's word.
        self.pendingKey = null
        self.takeOrder({outTradeNo: err.outTradeNo, orderToken: err.orderToken, payStatus: ''}, sent)
        self.startPolling('This order was already paid; confirming with the server…')
        return
      }
      self.update({state: 'error', statusText: '', errorText: err.message})
    })
  },

  // The same order's payment parameters again, while it is unpaid and not expired.
  onPayAgain: function () {
    if (BUSY[this.data.state] || !this.canPayAgain()) return
    this.pay()
  },

  onCheckAgain: function () {
    if (BUSY[this.data.state] || !this.data.order) return
    this.startPolling('Checking again…')
  },

  takeOrder: function (order, sent) {
    this.orderToken = order.orderToken
    this.payment = order.payment || null
    this.expiresAt = order.expiresAt || 0
    var cartTotal = money.total(sent)
    var totalFee = typeof order.totalFee === 'number' ? order.totalFee : cartTotal
    this.update({
      order: {
        outTradeNo: order.outTradeNo,
        totalText: money.yuan(totalFee),
        payStatus: order.payStatus,
        statusWord: STATUS_WORDS[order.payStatus] || order.payStatus || 'being checked',
        lines: displayLines(sent),
        priceChanged: totalFee !== cartTotal,
      },
    })
  },

  pay: function () {
    this.stopPolling()
    this.update({state: 'paying', note: '', statusText: 'Waiting for WeChat Pay…', errorText: ''})
    var self = this
    api.requestPayment(this.payment).then(function (result) {
      // Whatever wx.requestPayment says, only the server's SUCCESS means paid.
      var notes = {
        returned: 'WeChat Pay closed; confirming with the server…',
        cancelled: 'Payment cancelled. Checking with the server in case it went through.',
        failed: 'WeChat Pay reported a problem (' + result.errMsg + '). Checking with the server…',
      }
      self.startPolling(notes[result.outcome])
    })
  },

  // Background polling of GET /orders/{outTradeNo}; the page stays usable meanwhile.
  startPolling: function (note) {
    this.stopPolling()
    var run = this.pollRun
    var self = this
    var attempt = 0
    var waited = 0
    var outTradeNo = this.data.order.outTradeNo

    function next() {
      var delay = attempt * POLL_STEP_MS
      if (waited + delay > POLL_BUDGET_MS) {
        self.update({state: 'unconfirmed', statusText: 'Payment not confirmed yet (' + attempt + ' checks).'})
        return
      }
      waited += delay
      self.pollTimer = setTimeout(check, delay)
    }

    function check() {
      if (run !== self.pollRun) return
      attempt += 1
      self.update({state: 'checking', attempt: attempt, statusText: 'Checking payment… (attempt ' + attempt + ')'})
      api.orderStatus(outTradeNo, self.orderToken).then(function (status) {
        if (run !== self.pollRun) return
        self.update({errorText: ''})
        if (!self.showStatus(status)) next()
      }, function (err) {
        if (run !== self.pollRun) return
        if (err.status === 401 || err.status === 403) {
          // The token does not match this order: asking again cannot help.
          self.update({state: 'error', statusText: '', errorText: err.message})
          return
        }
        self.update({errorText: err.message}) // network or 5xx: keep trying
        next()
      })
    }

    this.update({note: note, errorText: ''})
    check()
  },

  stopPolling: function () {
    this.pollRun += 1
    if (this.pollTimer) clearTimeout(this.pollTimer)
    this.pollTimer = null
  },

  // Show the server's answer; true when the order reached a final state.
  showStatus: function (status) {
    var order = this.data.order
    var changes = {
      'order.payStatus': status.payStatus,
      'order.statusWord': STATUS_WORDS[status.payStatus] || status.payStatus,
    }
    if (typeof status.totalFee === 'number') changes['order.totalText'] = money.yuan(status.totalFee)
    if (status.payStatus === 'SUCCESS' || status.payStatus === 'REFUND') {
      changes.state = 'paid'
      changes.note = ''
      changes.statusText = 'Paid ' + money.yuan(status.totalFee) + ' yuan for order ' + order.outTradeNo + '.'
    } else if (status.payStatus === 'CLOSED' || status.payStatus === 'PAYERROR') {
      changes.state = 'closed'
      changes.note = ''
      changes.statusText = 'The order was closed without payment. Start a new order to buy again.'
    }
    this.update(changes)
    return FINAL[status.payStatus] === true
  },

  canPayAgain: function () {
    var order = this.data.order
    return !!(order && this.payment && order.payStatus === 'NOTPAY' && Date.now() < this.expiresAt)
  },

  // setData, then the buttons that follow from the new state.
  update: function (changes) {
    this.setData(changes)
    this.refreshButtons()
  },

  refreshButtons: function () {
    var state = this.data.state
    var hasOrder = !!this.data.order
    var open = hasOrder && (state === 'checking' || state === 'unconfirmed' || state === 'error')
    var buttons = {
      showCheckout: state === 'idle' || state === 'paid' || state === 'closed' || state === 'error',
      checkoutLabel: hasOrder ? 'New order' : 'Pay ' + this.data.cartTotalText + ' yuan',
      showPayAgain: open && this.canPayAgain(),
      showCheckAgain: open,
    }
    this.setData(buttons)
  },
})
