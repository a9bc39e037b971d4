"""Every limit of the service, with its unit in its name and the reason for its value.

Limits an operator may need to change are settings (service.settings); these are the
fixed ones, part of the contract or of how the service protects itself.
"""

import datetime

ACCOUNT_ID_CHARS_MAX = 128
# The one definition of a valid account id (the database checks the same pattern).
ACCOUNT_ID_REGEX = rf"[A-Za-z0-9._:@-]{{1,{ACCOUNT_ID_CHARS_MAX}}}"
IDEMPOTENCY_KEY_CHARS_MAX = 128
DESCRIPTION_CHARS_MAX = 500
REASON_CHARS_MAX = 500
JOB_FIELD_CHARS_MAX = 128
# A price's unit name, for people ("page", "1k tokens").
PRICE_UNIT_CHARS_MAX = 128
EXTERNAL_REF_CHARS_MAX = 255
CUMULATIVE_SERIES_CHARS_MAX = 128
METADATA_ENTRIES_MAX = 16
METADATA_KEY_CHARS_MAX = 64
METADATA_VALUE_CHARS_MAX = 256

RESERVATION_TTL_MIN = datetime.timedelta(seconds=1)
RESERVATION_TTL_MAX = datetime.timedelta(hours=24)
RESERVATION_TTL_DEFAULT = datetime.timedelta(minutes=15)

PAGE_SIZE_MIN = 1
PAGE_SIZE_MAX = 100
PAGE_SIZE_DEFAULT = 50
PAGE_TOKEN_CHARS_MAX = 200

# Signed 64-bit: amounts are BIGINT in PostgreSQL and int64 in the contract.
AMOUNT_INT64_MAX = 2**63 - 1
# What one account may hold, remaining plus held (credits_account_credits_max() in the SQL
# source): every per-account sum stays below AMOUNT_INT64_MAX.
ACCOUNT_CREDITS_MAX = 10**18
# The highest CREDITS_AMOUNT_MAX an operator may set: a thousandth of what an account may
# hold, so that one amount never comes near any sum's limit.
AMOUNT_MAX_LIMIT = ACCOUNT_CREDITS_MAX // 1000
# The longest rolling spend window (AccountSettings.spend_limit_rolling_hours): 31 days;
# credits_spend_window_hours_max() in the SQL source.
SPEND_WINDOW_HOURS_MAX = 31 * 24
# PostgreSQL's lock_timeout is an int32 of milliseconds (about 24.8 days); a client
# deadline further out than that is no limit at all in practice.
LOCK_TIMEOUT_MS_MAX = 2**31 - 1
# Priorities are int32 in the contract and INTEGER in PostgreSQL.
PRIORITY_INT32_MIN = -(2**31)
PRIORITY_INT32_MAX = 2**31 - 1

# gRPC messages of this contract are small; a large one is a mistake or an attack.
GRPC_MESSAGE_BYTES_MAX = 64 * 1024

# GetUsageSummary reads every reservation that finished in its window: a month at most
# keeps one call's read bounded.
USAGE_SUMMARY_WINDOW_MAX = datetime.timedelta(days=31)
# The job types one summary lists, most finished first: job types are the callers' text.
USAGE_SUMMARY_JOB_TYPES_MAX = 1000
# Balance alert thresholds of one account (or the service-wide default): few enough that
# deciding the alerts of a change costs nothing noticeable.
BALANCE_ALERT_THRESHOLDS_MAX = 10
# Events read per round trip of a WatchEvents stream.
EVENT_BATCH_MAX = 500
# A WatchEvents stream that heard no notification reads again after this long anyway: a
# lost notification, or a transaction without events that held the horizon back.
EVENT_POLL_INTERVAL_SECONDS = 1.0
# A stream reads at most this often. Under load every process of every instance notifies
# up to a hundred times a second, and each wake-up was a query per stream: 16 idle
# streams took a third of the cycles (docs/performance.md). Wake-ups closer than this
# are one read; an alert waits at most this much longer.
EVENT_READ_INTERVAL_MIN_SECONDS = 0.05
# Events the retention sweep deletes per statement.
EVENT_SWEEP_BATCH_MAX = 5000


def balance_alert_thresholds_problem(thresholds: list[int] | tuple[int, ...]) -> str | None:
    """What is wrong with a list of balance alert thresholds, or None."""
    if len(thresholds) > BALANCE_ALERT_THRESHOLDS_MAX:
        return f"at most {BALANCE_ALERT_THRESHOLDS_MAX} thresholds"
    if any(not 0 < t <= ACCOUNT_CREDITS_MAX for t in thresholds):
        return f"each threshold must be between 1 and {ACCOUNT_CREDITS_MAX}"
    if len(set(thresholds)) != len(thresholds):
        return "no threshold may repeat"
    return None
