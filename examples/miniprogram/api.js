// Calls to the `prepare` function. Amounts are integer fen; the server prices the cart.
const API_BASE = 'https://YOUR-PREPARE-FUNCTION-URL' // e.g. https://1250000000-abc.ap-guangzhou.tencentscf.com

function request(method, path, data, headers) {
  return new Promise((resolve, reject) => {
    wx.request({
      url: API_BASE + path,
      method,
      data,
      header: Object.assign({'Content-Type': 'application/json'}, headers || {}),
      timeout: 15000,
      success: (res) => {
        if (res.statusCode >= 200 && res.statusCode < 300) return resolve(res.data)
        const error = (res.data && res.data.error) || {code: 'HTTP_' + res.statusCode, message: 'request failed'}
        reject(Object.assign(new Error(error.message), {code: error.code, status: res.statusCode}))
      },
      fail: (err) => reject(Object.assign(new Error(err.errMsg || 'network error'), {code: 'NETWORK'})),
    })
  })
}

function login() {
  return new Promise((resolve, reject) => {
    wx.login({success: (r) => (r.code ? resolve(r.code) : reject(new Error('wx.login gave no code'))), fail: reject})
  })
}

// One key per checkout attempt: a retry after a timeout returns the same order.
function newIdempotencyKey() {
  return 'ck-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10)
}

async function createOrder(items, idempotencyKey) {
  const code = await login() // a code is single-use: get a fresh one for every attempt
  return request('POST', '/orders', {code, items, idempotencyKey})
}

function orderStatus(outTradeNo, orderToken) {
  return request('GET', '/orders/' + encodeURIComponent(outTradeNo), undefined, {'X-Order-Token': orderToken})
}

// Fen to a yuan string with integer arithmetic (1990 -> "19.90"); never divide money as floats.
function yuan(fen) {
  return Math.floor(fen / 100) + '.' + String(fen % 100).padStart(2, '0')
}

module.exports = {createOrder, orderStatus, newIdempotencyKey, yuan}
