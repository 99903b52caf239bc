#!/usr/bin/env python3
"""Generate Standard Webhooks test vectors with an independent implementation.

The verdict of every case (valid or not) comes from the `standardwebhooks` package on PyPI, the
reference Python library of the Standard Webhooks spec that Replicate's signatures follow; this
script only chooses the inputs. `tests/webhook_vectors.rs` checks the Rust verifier against the
committed output, so the Rust test never needs Python.

Run by hand from the repository root when cases are added:

    pip install standardwebhooks==1.1.0
    python3 hack/gen-webhook-vectors.py > tests/fixtures/webhooks/vectors.json

The output is deterministic (fixed seed, fixed clock), so re-running it yields the same file.
"""

import base64
import json
import random
import sys
from datetime import datetime, timezone
from importlib.metadata import version

from standardwebhooks import webhooks as sw

RNG = random.Random(20240206)  # the day Replicate launched webhook signing
TOLERANCE = 300
T0 = 1_717_171_717


def random_secret() -> str:
    return "whsec_" + base64.b64encode(RNG.randbytes(24)).decode()


def sign(secret: str, msg_id: str, ts: int, body: str) -> str:
    return sw.Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body)


def python_verdict(secrets, msg_id, ts_header, signature, body, now):
    """Whether the reference library accepts the delivery with any of the secrets, at `now`."""

    class FixedClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(now, tz=tz)

    real = sw.datetime
    sw.datetime = FixedClock
    try:
        errors = []
        for secret in secrets:
            try:
                sw.Webhook(secret).verify(
                    body,
                    {"webhook-id": msg_id, "webhook-timestamp": ts_header, "webhook-signature": signature},
                    json_parse=False,
                )
                return True, None
            except Exception as e:  # the library raises several types, all mean "refused"
                errors.append(f"{type(e).__name__}: {e}")
        return False, errors[-1] if errors else None
    finally:
        sw.datetime = real


def prediction(pid: str, status: str, extra: str = "") -> str:
    return json.dumps(
        {
            "id": pid,
            "model": "acme/hello",
            "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
            "status": status,
            "input": {"prompt": "a lighthouse at dusk" + extra},
            "output": None,
            "error": None,
            "created_at": "2024-06-01T12:00:00.123456Z",
            "urls": {"get": f"https://api.replicate.com/v1/predictions/{pid}"},
        },
        ensure_ascii=False,  # keep the raw UTF-8 in the signed bytes
    )


CASES = []


def case(name, *, secrets, body, expect, expected_error=None, msg_id=None, ts=T0, ts_header=None,
         signature=None, now=None, note=None):
    msg_id = msg_id or "msg_" + "".join(RNG.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))
    ts_header = ts_header if ts_header is not None else str(ts)
    signature = signature if signature is not None else sign(secrets[0], msg_id, ts, body)
    now = now if now is not None else ts
    valid, error = python_verdict(secrets, msg_id, ts_header, signature, body, now)
    if valid != expect:
        sys.exit(f"case {name}: the reference library says valid={valid} ({error}), expected {expect}")
    entry = {
        "name": name,
        "secrets": secrets,
        "webhook_id": msg_id,
        "webhook_timestamp": ts_header,
        "webhook_signature": signature,
        "body": body,
        "now": now,
        "tolerance_secs": TOLERANCE,
        "valid": valid,
    }
    if not valid:
        entry["expected_error"] = expected_error
        entry["reference_error"] = error
    if note:
        entry["note"] = note
    CASES.append(entry)


def flip(sig: str) -> str:
    raw = bytearray(base64.b64decode(sig.split(",", 1)[1]))
    raw[0] ^= 0x01
    return "v1," + base64.b64encode(bytes(raw)).decode()


def main():
    pub_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    case("published vector", secrets=[pub_secret], body='{"test": 2432232314}', expect=True,
         msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", ts=1614265330,
         signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
         note="replicate-api.md section 5.3")

    a, b, c = random_secret(), random_secret(), random_secret()
    body = prediction("gm3qorzdhgbfurvjtvhg6dckhu", "succeeded")

    case("valid prediction", secrets=[a], body=body, expect=True)
    case("tampered body", secrets=[a], body=body.replace("succeeded", "failed"), expect=False,
         expected_error="no_matching_signature", signature=sign(a, "msg_tb", T0, body), msg_id="msg_tb")
    case("tampered signature", secrets=[a], body=body, expect=False, expected_error="no_matching_signature",
         msg_id="msg_ts", signature=flip(sign(a, "msg_ts", T0, body)))
    case("wrong secret", secrets=[b], body=body, expect=False, expected_error="no_matching_signature",
         msg_id="msg_ws", signature=sign(a, "msg_ws", T0, body))
    case("tampered webhook-id", secrets=[a], body=body, expect=False, expected_error="no_matching_signature",
         msg_id="msg_other", signature=sign(a, "msg_original", T0, body))
    case("tampered timestamp", secrets=[a], body=body, expect=False, expected_error="no_matching_signature",
         msg_id="msg_tt", ts=T0 + 1, signature=sign(a, "msg_tt", T0, body))

    good = sign(a, "msg_multi", T0, body)
    bad1, bad2 = flip(good), sign(b, "msg_multi", T0, body)
    case("several signatures, match last", secrets=[a], body=body, expect=True, msg_id="msg_multi",
         signature=f"{bad1} {bad2} {good}")
    case("several signatures, match first", secrets=[a], body=body, expect=True, msg_id="msg_multi",
         signature=f"{good} {bad1}")
    case("several signatures, none match", secrets=[a], body=body, expect=False,
         expected_error="no_matching_signature", msg_id="msg_multi", signature=f"{bad1} {bad2}")

    old_sig, new_sig = sign(b, "msg_rot", T0, body), sign(c, "msg_rot", T0, body)
    case("rotation: old and new secrets, signed with old", secrets=[b, c], body=body, expect=True,
         msg_id="msg_rot", signature=old_sig)
    case("rotation: old and new secrets, signed with new", secrets=[b, c], body=body, expect=True,
         msg_id="msg_rot", signature=new_sig)
    case("rotation: sender signs with both, receiver knows new only", secrets=[c], body=body, expect=True,
         msg_id="msg_rot", signature=f"{old_sig} {new_sig}")
    case("rotation: retired secret only", secrets=[a], body=body, expect=False,
         expected_error="no_matching_signature", msg_id="msg_rot", signature=f"{old_sig} {new_sig}")

    v1 = sign(a, "msg_ver", T0, body)
    case("non-v1 entry with the right value", secrets=[a], body=body, expect=False,
         expected_error="no_matching_signature", msg_id="msg_ver", signature="v2," + v1.split(",", 1)[1])
    case("non-v1 entries beside a good v1", secrets=[a], body=body, expect=True, msg_id="msg_ver",
         signature=f"v1a,{v1.split(',', 1)[1]} v2,MzJsNHVzZWxlc3M= {v1}")

    uni = prediction("wm41d8ffq9rgj0cjb2ysrvzve0", "failed", " — café, 東京, 🚀")
    case("unicode body", secrets=[a], body=uni, expect=True)
    nfd = uni.replace("é", "e\u0301")
    case("unicode body, other normalisation", secrets=[a], body=nfd, expect=False,
         expected_error="no_matching_signature", msg_id="msg_nfd", signature=sign(a, "msg_nfd", T0, uni))
    raw = '{\n  "id": "x1",   "status": "processing",\n  "created_at": "2024-06-01T12:00:00Z" }\n'
    case("body with insignificant whitespace", secrets=[a], body=raw, expect=True)
    case("large body", secrets=[a], body=prediction("big", "succeeded", "x" * 65536), expect=True)
    case("secret without whsec_ prefix", secrets=[a[len("whsec_"):]], body=body, expect=True,
         msg_id="msg_np", signature=sign(a, "msg_np", T0, body))

    case("timestamp at the edge of tolerance, past", secrets=[a], body=body, expect=True, now=T0 + TOLERANCE)
    case("timestamp at the edge of tolerance, future", secrets=[a], body=body, expect=True, now=T0 - TOLERANCE)
    case("stale timestamp", secrets=[a], body=body, expect=False, expected_error="stale", now=T0 + TOLERANCE + 1)
    case("future timestamp", secrets=[a], body=body, expect=False, expected_error="future",
         now=T0 - TOLERANCE - 1)
    case("missing signature header", secrets=[a], body=body, expect=False, expected_error="missing_header",
         signature="")
    case("timestamp not a number", secrets=[a], body=body, expect=False, expected_error="malformed_timestamp",
         ts_header="yesterday")

    json.dump(
        {
            "generator": "hack/gen-webhook-vectors.py",
            "reference": f"standardwebhooks {version('standardwebhooks')} (PyPI)",
            "cases": CASES,
        },
        sys.stdout,
        indent=2,
        ensure_ascii=False,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
