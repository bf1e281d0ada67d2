"""An independent CloudEvents client for Flint's gateway: the Python
`cloudevents` SDK sends events in binary, structured and batched mode and
reads the replies. Usage: ce_client.py HOST:PORT VIRTUAL_HOST. Exits non-zero
(with the reason) on any mismatch."""
import json
import sys
import urllib.error
import urllib.request

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

addr, vhost = sys.argv[1], sys.argv[2]


def post(headers, body):
    headers = dict(headers)
    headers["Host"] = vhost
    req = urllib.request.Request(f"http://{addr}/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


event = CloudEvent(
    {"type": "com.example.ping", "source": "/python", "subject": "naïve subject"},
    {"hello": "wörld"},
)

# Binary mode: the SDK sends the subject unencoded (urllib puts it on the wire
# as ISO-8859-1) and the gateway still reads it; the reply comes back binary.
headers, body = to_binary(event)
status, rheaders, rbody = post(headers, body)
check(status == 200, f"binary status {status} {rbody!r}")
reply = from_http(rheaders, rbody)
check(reply["type"] == "com.example.ping.reply", f"binary reply type {reply['type']}")
check(reply["id"] == "reply-" + event["id"], "binary reply id")
check(reply.data["got"] == {"hello": "wörld"}, f"binary reply data {reply.data}")
check(reply.data["subject"] == "naïve subject", f"percent-decoding of ce-subject: {reply.data}")

# Structured mode: the reply comes back structured.
headers, body = to_structured(event)
status, rheaders, rbody = post(headers, body)
check(status == 200, f"structured status {status} {rbody!r}")
ctype = {k.lower(): v for k, v in rheaders.items()}.get("content-type", "")
check(ctype.startswith("application/cloudevents+json"), f"structured reply type {rheaders}")
reply = from_http(rheaders, rbody)
check(reply["type"] == "com.example.ping.reply", "structured reply type")
check(reply.data["got"] == {"hello": "wörld"}, f"structured reply data {reply.data}")

# Batched mode: one invocation per event.
events = [CloudEvent({"type": "t", "source": "/py"}, {"n": i}) for i in range(3)]
batch = json.dumps([json.loads(to_structured(e)[1]) for e in events]).encode()
status, rheaders, rbody = post({"Content-Type": "application/cloudevents-batch+json"}, batch)
check(status == 200, f"batch status {status} {rbody!r}")
replies = json.loads(rbody)
check([r["data"]["got"]["n"] for r in replies] == [0, 1, 2], f"batch replies {replies}")

# No reply: 202 Accepted.
headers, body = to_binary(CloudEvent({"type": "x.noreply", "source": "/py"}, None))
status, _, _ = post(headers, body)
check(status == 202, f"no-reply status {status}")

# Missing required attribute (source): 400.
status, _, rbody = post({"ce-specversion": "1.0", "ce-id": "9", "ce-type": "t"}, b"")
check(status == 400 and b"source" in rbody, f"invalid event: {status} {rbody!r}")
print("python cloudevents SDK: all modes ok")
