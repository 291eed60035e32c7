# The calls of docs/bench/redis-callgrind.py (BENCHMARKS.md §4): the same
# calls as the server-time rows of benches/redis.rs. `load(src)` loads a
# script (a file of src/store/ or inline Lua) and gives its sha; `pack(fmt,
# ...)` is Python's struct.pack; `load(src, function="plan")` (or "window")
# loads it as the store's Redis function and gives the function's name.
RLF = (
    "redis.call('set', KEYS[1], 0, 'EX', ARGV[2], 'NX') "
    "local consumed = redis.call('incrby', KEYS[1], ARGV[1]) "
    "local ttl = redis.call('pttl', KEYS[1]) "
    "if ttl == -1 then redis.call('expire', KEYS[1], ARGV[2]) ttl = 1000 * ARGV[2] end "
    "return {consumed, ttl}"
)
LIMIT, WINDOW = 1000000000000, 60000
CALLS = [
    ("EVALSHA of `return 1`", lambda load: ["EVALSHA", load("return 1"), "0"]),
    ("rate-limiter-flexible's script", lambda load: ["EVALSHA", load(RLF), "1", "rlf:x", "1", "60"]),
    ("window.lua, one sliding-window check, FCALL (what the store sends)", lambda load: [
        "FCALL", load("window.lua", function="window"), "1", "tt:{b}:sb2:y",
        pack("<ddd", LIMIT, 1, WINDOW)]),
    # Cost 40: the key holds more than 65 535 units after the warm-up, so
    # its counts are wide (97 bytes), as on a busy tenant's key and on the
    # key of benches/redis.rs (which has counted far more by then).
    ("window.lua, FCALL, wide counts (cost 40)", lambda load: [
        "FCALL", load("window.lua", function="window"), "1", "tt:{b}:sb2:z",
        pack("<ddd", LIMIT, 40, WINDOW)]),
    ("window.lua, the same by EVALSHA (without functions)", lambda load: [
        "EVALSHA", load("window.lua"), "1", "tt:{b}:sb2:x", pack("<ddd", LIMIT, 1, WINDOW)]),
    ("admit.lua, one sliding-window check", lambda load: [
        "EVALSHA", load("admit.lua"), "1", "tt:{b}:sb2:g", "a", "", "", "1",
        "sb", str(LIMIT), "1", str(WINDOW), "", "0"]),
    ("admit.lua, rate + daily quota + concurrency", lambda load: [
        "EVALSHA", load("admit.lua"), "3", "tt:{b}:sb2:t", "tt:{b}:cald:t", "tt:{b}:cc:t",
        "a", "", "lease-1", "3",
        "sb", str(LIMIT), "1", str(WINDOW), "",
        "cal", str(LIMIT), "1", "d", "",
        "cc", "10", "1", "300000", "", "0"]),
]


def this_month():
    """The bounds in ms of this host's UTC month, as the store sends them."""
    import calendar, datetime
    d = datetime.datetime.now(datetime.timezone.utc)
    start = calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    end = calendar.timegm((d.year + d.month // 12, d.month % 12 + 1, 1, 0, 0, 0))
    return start * 1000, end * 1000


# plan.lua's argument: 9 doubles, the lease member and a zero byte (then,
# for a month, the month's bounds).
CALLS.append(("plan.lua, rate + daily quota + concurrency, FCALL (what the store sends)", lambda load: [
    "FCALL", load("plan.lua", function="plan"), "3", "tt:{b}:sb2:f", "tt:{b}:cald:f", "tt:{b}:cc:f",
    pack("<ddddddddd", LIMIT, 1, WINDOW, LIMIT, 1, 2, 10, 1, 300000) + b"lease-1:1\0"]))
CALLS.append(("plan.lua, the same by EVALSHA (without functions)", lambda load: [
    "EVALSHA", load("plan.lua"), "3", "tt:{b}:sb2:p", "tt:{b}:cald:p", "tt:{b}:cc:p",
    pack("<ddddddddd", LIMIT, 1, WINDOW, LIMIT, 1, 2, 10, 1, 300000) + b"lease-1:1\0"]))
CALLS.append(("plan.lua, rate + monthly quota + concurrency, FCALL", lambda load: [
    "FCALL", load("plan.lua", function="plan"), "3", "tt:{b}:sb2:m", "tt:{b}:calm:m", "tt:{b}:cc:m",
    pack("<ddddddddd", LIMIT, 1, WINDOW, LIMIT, 1, 4, 10, 1, 300000) + b"lease-1:1\0"
    + pack("<dd", *this_month())]))
