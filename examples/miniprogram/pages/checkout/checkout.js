// Checkout page: create the order, pay, then trust only the server's status.
const api = require('../../api.js')

const POLL_INTERVAL_MS = 2000
const POLL_LIMIT = 30 // about a minute; after that, say "pending" and let the user refresh

Page({
  data: {
    cart: [{sku: 'A1', name: 'Oolong tea 250g', quantity: 2}],
    state: 'idle', // idle | creating | paying | confirming | paid | pending | failed
    message: '',
    order: null,
    amount: '',
  },

  async onPay() {
    if (this.data.state === 'creating' || this.data.state === 'paying' || this.data.state === 'confirming') return
    const key = this.idempotencyKey || (this.idempotencyKey = api.newIdempotencyKey())
    this.setData({state: 'creating', message: ''})
    wx.showLoading({title: 'Creating order', mask: true})
    let order
    try {
      order = await api.createOrder(this.data.cart.map(({sku, quantity}) => ({sku, quantity})), key)
    } catch (err) {
      wx.hideLoading()
      return this.fail(err)
    }
    wx.hideLoading()
    this.setData({order, amount: api.yuan(order.totalFee), state: order.payStatus === 'SUCCESS' ? 'paid' : 'paying'})
    if (order.payStatus === 'SUCCESS' || !order.payment) return this.confirm()

    wx.requestPayment({
      ...order.payment, // timeStamp, nonceStr, package, signType, paySign: passed as is
      complete: () => this.confirm(), // success, cancel or nothing at all: ask the server
    })
  },

  async confirm() {
    const {outTradeNo, orderToken} = this.data.order
    this.setData({state: 'confirming'})
    wx.showLoading({title: 'Confirming payment', mask: true})
    try {
      for (let i = 0; i < POLL_LIMIT; i++) {
        const status = await api.orderStatus(outTradeNo, orderToken)
        if (status.payStatus === 'SUCCESS' || status.payStatus === 'REFUND') {
          this.idempotencyKey = null
          return this.setData({state: 'paid', message: 'Paid ' + api.yuan(status.totalFee) + ' yuan'})
        }
        if (status.payStatus === 'CLOSED' || status.payStatus === 'PAYERROR') {
          this.idempotencyKey = null
          return this.setData({state: 'failed', message: 'The order was not paid. Please try again.'})
        }
        await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS))
      }
      this.setData({state: 'pending', message: 'Payment not confirmed yet. Pull down to refresh.'})
    } catch (err) {
      this.fail(err)
    } finally {
      wx.hideLoading()
    }
  },

  onPullDownRefresh() {
    if (this.data.order) this.confirm().finally(() => wx.stopPullDownRefresh())
    else wx.stopPullDownRefresh()
  },

  fail(err) {
    const messages = {
      LOGIN_FAILED: 'Login expired, please try again.',
      STORE_UNAVAILABLE: 'Service busy, please try again shortly.',
      NETWORK: 'Network error, please check your connection.',
    }
    const text = messages[err.code] || (err.code && err.code.startsWith('WECHATPAY_') ? 'WeChat Pay is busy, please retry.' : err.message)
    this.setData({state: 'failed', message: text})
  },
})
