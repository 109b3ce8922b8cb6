"""Time-ordered event ids (RFC 9562 UUIDv7)."""

from __future__ import annotations

import os
import threading
from time import time_ns

# RFC 9562 section 6.2, method 1: a 42-bit counter in rand_a (12 bits) and the
# top 30 bits of rand_b, seeded randomly with its top bit clear on every new
# millisecond and incremented within one; the last 32 bits are random.
_COUNTER_BITS = 42
_COUNTER_LIMIT = 1 << _COUNTER_BITS
_SEED_SHIFT = 80 - (_COUNTER_BITS - 1)  # from 80 random bits, keep 41 for the seed

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A UUIDv7 in its text form; later calls in this process always sort after earlier ones.

    When the clock stands still or goes back, the last timestamp is reused and
    the counter advances; a counter overflow advances the timestamp by 1 ms.
    """
    global _last_ms, _counter
    now_ms = time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    with _lock:
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = rand >> _SEED_SHIFT
        else:
            _counter += 1
            if _counter >= _COUNTER_LIMIT:
                _last_ms += 1
                _counter = rand >> _SEED_SHIFT
        ms = _last_ms
        counter = _counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | (rand & 0xFFFF_FFFF)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
