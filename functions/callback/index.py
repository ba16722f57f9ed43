"""SCF entry point of the `callback` function (placeholder until its issue lands)."""

import json


def main_handler(event, context):
    body = {"error": {"code": "NOT_IMPLEMENTED", "message": "the callback function is not available yet"}}
    return {"isBase64Encoded": False, "statusCode": 501,
            "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
