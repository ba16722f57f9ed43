// Calls to the `prepare` function. Amounts are integer fen; the server prices the cart.
// Promises and callbacks only (no async/await): runs without DevTools' ES5/enhanced compile.
var config = require('./config.js')

var REQUEST_TIMEOUT_MS = 15000

// An Error carrying the server's human message, plus its code and any public fields
// (ORDER_ALREADY_PAID adds outTradeNo and orderToken).
function apiError(message, code, status, extra) {
  var error = new Error(message)
  error.code = code
  error.status = status
  return Object.assign(error, extra || {})
}

function request(method, path, data, headers) {
  if (!config.configured) {
    return Promise.reject(apiError('Set API_BASE in config.js to the Function URL of prepare.', 'NOT_CONFIGURED', 0))
  }
  return new Promise(function (resolve, reject) {
    wx.request({
      url: config.API_BASE + path,
      method: method,
      data: data,
      header: Object.assign({'Content-Type': 'application/json'}, headers || {}),
      timeout: REQUEST_TIMEOUT_MS,
      success: function (res) {
        if (res.statusCode >= 200 && res.statusCode < 300) {
          resolve(res.data)
          return
        }
        // 4xx/5xx answers are {"error": {"code", "message", ...}}: show the message, keep the code.
        var body = res.data && typeof res.data === 'object' ? res.data.error : null
        if (body && body.message) {
          var extra = {}
          Object.keys(body).forEach(function (key) {
            if (key !== 'code' && key !== 'message') extra[key] = body[key]
          })
          reject(apiError(body.message, body.code, res.statusCode, extra))
        } else {
          reject(apiError('The server answered HTTP ' + res.statusCode + '. Please try again.', 'HTTP_' + res.statusCode,
            res.statusCode))
        }
      },
      fail: function (err) {
        var detail = err && err.errMsg ? ' (' + err.errMsg + ')' : ''
        reject(apiError('Could not reach the server' + detail + '. Check your connection and try again.', 'NETWORK', 0))
      },
    })
  })
}

function login() {
  return new Promise(function (resolve, reject) {
    wx.login({
      success: function (res) {
        if (res.code) resolve(res.code)
        else reject(apiError('WeChat login gave no code. Please try again.', 'LOGIN_NO_CODE', 0))
      },
      fail: function (err) {
        reject(apiError('WeChat login failed (' + (err && err.errMsg) + '). Please try again.', 'LOGIN_FAILED', 0))
      },
    })
  })
}

// A fresh key for each checkout attempt: retrying that attempt (e.g. after a timeout)
// with the same key gets the same order back instead of a second one.
function newIdempotencyKey() {
  var random = Math.random().toString(36).slice(2, 10) + Math.random().toString(36).slice(2, 10)
  return 'ck-' + Date.now().toString(36) + '-' + random
}

// POST /orders. A login code is single-use, so every call gets a fresh one.
function createOrder(items, idempotencyKey) {
  return login().then(function (code) {
    return request('POST', '/orders', {code: code, items: items, idempotencyKey: idempotencyKey})
  })
}

// GET /orders/{outTradeNo}: {outTradeNo, payStatus, totalFee, paidAt}.
function orderStatus(outTradeNo, orderToken) {
  return request('GET', '/orders/' + encodeURIComponent(outTradeNo), undefined, {'X-Order-Token': orderToken})
}

// wx.requestPayment as a promise that always resolves: {outcome, errMsg}, outcome being
// 'returned' (success callback), 'cancelled' (the user closed the sheet) or 'failed'.
// None of them is proof of anything; only GET /orders/{outTradeNo} is.
function requestPayment(payment) {
  return new Promise(function (resolve) {
    wx.requestPayment({
      timeStamp: payment.timeStamp,
      nonceStr: payment.nonceStr,
      package: payment.package,
      signType: payment.signType,
      paySign: payment.paySign,
      success: function (res) {
        resolve({outcome: 'returned', errMsg: res && res.errMsg})
      },
      fail: function (err) {
        var errMsg = (err && err.errMsg) || ''
        resolve({outcome: errMsg.indexOf('cancel') >= 0 ? 'cancelled' : 'failed', errMsg: errMsg})
      },
    })
  })
}

module.exports = {
  createOrder: createOrder,
  orderStatus: orderStatus,
  requestPayment: requestPayment,
  newIdempotencyKey: newIdempotencyKey,
}
