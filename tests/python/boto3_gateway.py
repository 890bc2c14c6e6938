"""boto3's bedrock-runtime client against the gateway (examples/gateway).

Usage: boto3_gateway.py ENDPOINT_URL MODEL SCENARIO, with the tenant's key in
AWS_BEARER_TOKEN_BEDROCK, which botocore sends as `Authorization: Bearer <key>` for the
`bedrock` signing name (botocore/utils.py `get_token_from_environment`, handlers.py
`_should_prefer_bearer_auth`).

Scenarios, each printing what it saw, one fact a line:
- `calls`: invoke_model, converse and converse_stream, each answered in full;
- `denied`: the key is not the gateway's: AccessDeniedException (403);
- `throttled`: the first call fits the tenant's cap, the second does not; with botocore's
  standard retry mode and 3 attempts in all it must arrive as ThrottlingException (429) after
  botocore retried it, and botocore's own checkers must call it throttling.
"""

import json
import sys

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.retries import standard

endpoint, model, scenario = sys.argv[1], sys.argv[2], sys.argv[3]


def client(attempts):
    # `total_max_attempts` counts the first attempt; `max_attempts` would count retries only.
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
    )


def invoke(c, prompt, max_tokens=200):
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    return c.invoke_model(
        modelId=model,
        body=json.dumps(body),
        contentType="application/json",
        accept="application/json",
    )


print("botocore", botocore.__version__)
messages = [{"role": "user", "content": [{"text": "What did the Broad Street pump teach?"}]}]

if scenario == "calls":
    c = client(1)
    answer = json.loads(invoke(c, "Summarise the Broad Street pump.")["body"].read())
    assert answer["content"][0]["text"], answer
    print("invoke usage", answer["usage"]["input_tokens"], answer["usage"]["output_tokens"])

    out = c.converse(modelId=model, messages=messages, inferenceConfig={"maxTokens": 150})
    assert out["output"]["message"]["content"][0]["text"], out
    print("converse usage", out["usage"]["inputTokens"], out["usage"]["outputTokens"])

    stream = c.converse_stream(
        modelId=model, messages=messages, inferenceConfig={"maxTokens": 120}
    )["stream"]
    text, usage, stop, kinds = "", None, None, []
    for event in stream:
        kind = next(iter(event))
        kinds.append(kind)
        if kind == "contentBlockDelta":
            text += event[kind]["delta"]["text"]
        elif kind == "messageStop":
            stop = event[kind]["stopReason"]
        elif kind == "metadata":
            usage = event[kind]["usage"]
    assert kinds[0] == "messageStart" and kinds[-1] == "metadata", kinds
    assert text and stop and usage, (text, stop, usage)
    print("stream events", len(kinds), "text chars", len(text), "stop", stop)
    print("stream usage", usage["inputTokens"], usage["outputTokens"], usage["totalTokens"])

elif scenario == "denied":
    try:
        client(1).converse(modelId=model, messages=messages)
        raise SystemExit("an unknown key was let through")
    except ClientError as e:
        meta = e.response["ResponseMetadata"]
        print("denied", e.response["Error"]["Code"], meta["HTTPStatusCode"])

elif scenario == "throttled":
    c = client(3)
    sent = []
    c.meta.events.register("before-send.bedrock-runtime.InvokeModel", lambda **kw: sent.append(1))
    invoke(c, "The first call fits the cap.")["body"].read()
    try:
        invoke(c, "The second does not.")
        raise SystemExit("the call over the cap was let through")
    except ClientError as e:
        meta = e.response["ResponseMetadata"]
        print("refused", e.response["Error"]["Code"], meta["HTTPStatusCode"])
        print("retry-after", meta["HTTPHeaders"].get("retry-after"))
        # botocore retried it as it retries Bedrock's own throttles: 3 attempts in all.
        print("attempts", len(sent) - 1, "retry attempts", meta["RetryAttempts"])
        # And its standard-mode checkers, asked directly, call it throttling.
        context = standard.RetryContext(
            attempt_number=1,
            operation_model=c.meta.service_model.operation_model("InvokeModel"),
            parsed_response=e.response,
        )
        print("throttling", standard.ThrottledRetryableChecker().is_retryable(context))
        print("retryable", standard.StandardRetryConditions().is_retryable(context))

else:
    raise SystemExit(f"unknown scenario {scenario}")
