// The one place the backend's address is kept: the Function URL of `prepare`.
// api.js sends POST ${API_BASE}/orders and GET ${API_BASE}/orders/{outTradeNo};
// prepare's routes match on the end of the path, so a gateway prefix works too.
//
// Tencent Cloud documents a public Function URL as
//   https://<app-id>-<url-id>.<region>.tencentscf.com
// e.g. https://1250000000-abcd1234ef.ap-guangzhou.tencentscf.com
// (函数 URL 概述: https://cloud.tencent.com/document/product/583/96099 ;
//  in English: https://www.tencentcloud.com/document/product/583/69491).
// Copy yours from the SCF console (函数 URL), paste it below without a trailing slash,
// and add its host to the mini-program's request domains (request 合法域名).
// (The local stack of `make run` cannot stand in: its login accepts only test codes, and
// its prepay ids open no payment sheet. Its browser page /demo/ plays this flow instead.)
var API_BASE = 'https://<app-id>-<url-id>.<region>.tencentscf.com'

module.exports = {
  API_BASE: API_BASE.replace(/\/+$/, ''),
  // False until the placeholder above is replaced: the page says so instead of calling out.
  configured: !/[<>]/.test(API_BASE),
}
