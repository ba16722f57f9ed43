"""A local WeChat Pay (APIv3) that speaks and signs like the real one; APIv3 has no sandbox.

Modules:
- app.py          `Simulator`: lifecycle and the control operations (Python API)
- server.py       the threaded HTTP server: faults, response signatures
- signer.py       the key modes (public key, certificates, the switch): the one signer
- wechat_api.py   /v3/... (merchant-signed) and api.weixin.qq.com: /sns/jscode2session,
                  /cgi-bin/token, /cgi-bin/stable_token, /wxa/sec/order/upload_shipping_info, get_order
- control_api.py  /_sim/... routes, one per Simulator method
- ledger.py       orders and refunds with WeChat's validation and state rules
- notifier.py     notifications: encryption, signature, delivery, the retry schedule
- bill.py         the trade bill CSV (render and parse)
- miniprogram.py  code2Session test codes
- access_tokens.py  stable_token and /cgi-bin/token tokens: reuse, refresh, expiry, invalidation
- shipping.py     the order shipping service (发货信息管理): uploads, corrections, get_order
- shipping_rules.py  its field limits, carrier codes and errcodes, as data (with sources)
- faults.py, background.py, timeutil.py, protocol.py, errors.py: the plumbing

The CLI is `python -m devtools.wechatpay_simulator` (see that module).
"""

from devtools.simulator.app import Simulator
from devtools.simulator.bill import TradeBill, format_yuan, parse_trade_bill, yuan_to_fen
from devtools.simulator.errors import SimError
from devtools.simulator.miniprogram import openid_for
from devtools.simulator.notifier import RETRY_SCHEDULE_S

__all__ = ["RETRY_SCHEDULE_S", "SimError", "Simulator", "TradeBill", "format_yuan", "openid_for",
           "parse_trade_bill", "yuan_to_fen"]
