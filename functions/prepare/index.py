"""SCF entry point of the `prepare` function (placeholder until its issue lands)."""

import json


def main_handler(event, context):
    body = {"error": {"code": "NOT_IMPLEMENTED", "message": "the prepare function is not available yet"}}
    return {"isBase64Encoded": False, "statusCode": 501,
            "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
