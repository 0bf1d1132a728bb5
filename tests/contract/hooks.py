"""schemathesis hooks for allot's contract tests (loaded through SCHEMATHESIS_HOOKS).

Every request that carries a valid Idempotency-Key gets a fresh one, so each generated allocation
is a new request rather than a replay of an earlier case that happened to draw the same key.
A key that is missing or invalid (a negative case) is sent as generated: its 400 is part of the
contract being checked.
"""

import re
import uuid

import schemathesis

# What the API accepts: 1-255 visible ASCII characters (allot_shared::ident).
VALID_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@schemathesis.hook
def before_call(context, case, kwargs):
    """A fresh Idempotency-Key in place of a valid generated one."""
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        value = headers[name]
        if name.lower() == "idempotency-key" and isinstance(value, str) and VALID_IDEMPOTENCY_KEY.fullmatch(value):
            headers[name] = f"contract-{uuid.uuid4()}"
