"""The schema, as SQLAlchemy Core tables: what Alembic migrations target and what the
store's read queries are built from. The mutations themselves are server-side functions
(service/store/sql/ledger.sql), so that every RPC is one round trip under one account lock.

Amounts are BIGINT counts of credit units. Every invariant the ledger relies on is also
a constraint here, so that a bug in code cannot write an impossible state.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TIMESTAMPTZ = TIMESTAMP(timezone=True)

# The lock anchor: every transaction that changes an account first locks its row, so
# writers of one account serialize and never deadlock (one lock, always taken first).
# The row also holds the account's settings (AccountSettings in the contract): every call
# reads them under the lock it takes anyway.
accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("frozen", Boolean, nullable=False, server_default=text("false")),
    # Overruns may leave the account owing up to this much (0: no overdraft).
    Column("overdraft_limit", BigInteger, nullable=False, server_default=text("0")),
    # What overruns borrowed beyond the available credits and no grant has paid back yet:
    # the next grants pay it first.
    Column("debt", BigInteger, nullable=False, server_default=text("0")),
    # Spend limits (0: none): per UTC day, per UTC calendar month, per rolling window of
    # spend_limit_rolling_hours hours.
    Column("spend_limit_day", BigInteger, nullable=False, server_default=text("0")),
    Column("spend_limit_month", BigInteger, nullable=False, server_default=text("0")),
    Column("spend_limit_rolling", BigInteger, nullable=False, server_default=text("0")),
    Column("spend_limit_rolling_hours", Integer, nullable=False, server_default=text("0")),
    # AccountSettings.balance_alert_thresholds: NULL means the service-wide default.
    Column("balance_alert_thresholds", ARRAY(BigInteger), nullable=True),
    # Balance alerts' state (credits_emit): the thresholds the available balance is below,
    # NULL until the account's first change since alerts exist; whether it is at 0.
    Column("balance_alerts_below", ARRAY(BigInteger), nullable=True),
    Column("balance_depleted", Boolean, nullable=False, server_default=text("false")),
    # How many audited changes the settings have had (account_settings_changes).
    Column("settings_version", BigInteger, nullable=False, server_default=text("0")),
    Column("settings_updated_at", TIMESTAMPTZ, nullable=True),
    Column("settings_updated_by", Text, nullable=True),
    CheckConstraint("account_id ~ '^[A-Za-z0-9._:@-]{1,128}$'", name="account_id_format"),
    CheckConstraint("settings_version >= 0", name="settings_version_non_negative"),
    CheckConstraint(
        "overdraft_limit BETWEEN 0 AND 1000000000000000000 AND debt >= 0"
        " AND spend_limit_day >= 0 AND spend_limit_month >= 0 AND spend_limit_rolling >= 0",
        name="limits_non_negative",
    ),
    CheckConstraint(
        "spend_limit_rolling_hours BETWEEN 0 AND 744"
        " AND (spend_limit_rolling = 0 OR spend_limit_rolling_hours > 0)",
        name="rolling_window_set",
    ),
    CheckConstraint(
        "(settings_version = 0) = (settings_updated_at IS NULL AND settings_updated_by IS NULL)",
        name="settings_audit_complete",
    ),
)

# The audit trail of account settings: one row per change that changed something, with
# who, when, why and the settings before and after. Append-only like the ledger.
account_settings_changes = Table(
    "account_settings_changes",
    metadata,
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("changed_at", TIMESTAMPTZ, nullable=False),
    Column("changed_by", Text, nullable=False),
    Column("update_mask", ARRAY(Text), nullable=False),
    Column("before", JSONB, nullable=False),
    Column("after", JSONB, nullable=False),
    Column("reason", Text, nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("account_id", "version"),
    CheckConstraint("version > 0", name="version_positive"),
)

# The price list: one row per version of a job type's price, global (no account), set by
# ops and never changed (append-only like the ledger). A version without a unit price
# retires its job type. The version number is an identity: concurrent versions never
# need a lock to be numbered.
prices = Table(
    "prices",
    metadata,
    Column("version", BigInteger, Identity(always=True), primary_key=True),
    Column("job_type", Text, nullable=False),
    Column("unit_price", BigInteger, nullable=True),
    Column("unit", Text, nullable=False, server_default=text("''")),
    Column("effective_at", TIMESTAMPTZ, nullable=False),
    Column("set_at", TIMESTAMPTZ, nullable=False),
    Column("set_by", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=text("''")),
    CheckConstraint("job_type ~ '^[A-Za-z0-9._:@-]{1,128}$'", name="job_type_format"),
    CheckConstraint("unit_price > 0", name="unit_price_positive"),
    CheckConstraint("(unit_price IS NULL) = (unit = '')", name="unit_named_when_priced"),
    # A version never reaches back: what was charged before it stays as it was.
    CheckConstraint("effective_at >= set_at", name="not_backdated"),
    # What a priced reservation's foreign key names: its job type, version and unit price
    # are one version's.
    UniqueConstraint("job_type", "version", "unit_price"),
    Index("ix_prices_in_effect", "job_type", "effective_at", "version"),
)

grants = Table(
    "grants",
    metadata,
    Column("grant_id", UUID(as_uuid=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("source", SmallInteger, nullable=False),
    Column("original_amount", BigInteger, nullable=False),
    Column("remaining_amount", BigInteger, nullable=False),
    Column("revoked_amount", BigInteger, nullable=False, server_default=text("0")),
    # What a revocation asked for but could not take back (already spent or held).
    Column("unrecovered_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("expired_amount", BigInteger, nullable=False, server_default=text("0")),
    # What this grant paid of the account's overdraft debt when it arrived.
    Column("debt_paid_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("external_ref", Text, nullable=True, unique=True),
    Column("expires_at", TIMESTAMPTZ, nullable=True),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("description", Text, nullable=False, server_default=text("''")),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint("source BETWEEN 1 AND 5", name="source_known"),
    CheckConstraint("original_amount > 0", name="original_positive"),
    CheckConstraint("remaining_amount BETWEEN 0 AND original_amount", name="remaining_bounded"),
    CheckConstraint(
        "revoked_amount >= 0 AND unrecovered_amount >= 0 AND expired_amount >= 0"
        " AND debt_paid_amount >= 0",
        name="counters_non_negative",
    ),
    CheckConstraint(
        "remaining_amount + revoked_amount + expired_amount + debt_paid_amount <= original_amount",
        name="taken_bounded",
    ),
    Index(
        "ix_grants_spendable",
        "account_id",
        "priority",
        "expires_at",
        "created_at",
        postgresql_where=text("remaining_amount > 0"),
    ),
    # At most one signup bonus per account (GrantSource.SIGNUP_BONUS = 2).
    Index(
        "uq_grants_one_signup_bonus",
        "account_id",
        unique=True,
        postgresql_where=text("source = 2"),
    ),
)

reservations = Table(
    "reservations",
    metadata,
    Column("reservation_id", UUID(as_uuid=True), primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("confirmed_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("returned_amount", BigInteger, nullable=False, server_default=text("0")),
    # ReservationStatus: 1 reserved, 2 confirmed, 3 released, 4 expired.
    Column("status", SmallInteger, nullable=False, server_default=text("1")),
    Column("job_id", Text, nullable=False, server_default=text("''")),
    Column("job_type", Text, nullable=False, server_default=text("''")),
    Column("description", Text, nullable=False, server_default=text("''")),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("release_reason", Text, nullable=False, server_default=text("''")),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("expires_at", TIMESTAMPTZ, nullable=False),
    Column("settled_at", TIMESTAMPTZ, nullable=True),
    # What Confirm captured beyond the hold (included in confirmed_amount), and the part
    # of it that became the account's debt rather than coming from available credits.
    Column("overrun_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("overrun_debt_amount", BigInteger, nullable=False, server_default=text("0")),
    # Priced by quantity: the price version used, its unit price and the quantity.
    Column("price_version", BigInteger, nullable=True),
    Column("unit_price", BigInteger, nullable=True),
    Column("quantity", BigInteger, nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "(price_version IS NULL AND unit_price IS NULL AND quantity IS NULL)"
        " OR (price_version IS NOT NULL AND unit_price > 0 AND quantity > 0"
        " AND amount::numeric = unit_price::numeric * quantity)",
        name="priced_consistent",
    ),
    # A version of the reservation's own job type, at that version's unit price.
    ForeignKeyConstraint(
        ["job_type", "price_version", "unit_price"],
        ["prices.job_type", "prices.version", "prices.unit_price"],
    ),
    CheckConstraint(
        "confirmed_amount >= 0 AND returned_amount >= 0 AND overrun_amount >= 0"
        " AND overrun_debt_amount BETWEEN 0 AND overrun_amount"
        " AND confirmed_amount + returned_amount <= amount + overrun_amount",
        name="settled_bounded",
    ),
    CheckConstraint(
        "(status = 1 AND confirmed_amount = 0 AND returned_amount = 0 AND overrun_amount = 0"
        " AND settled_at IS NULL)"
        " OR (status = 2 AND confirmed_amount > 0"
        " AND confirmed_amount + returned_amount = amount + overrun_amount"
        " AND (overrun_amount = 0 OR returned_amount = 0) AND settled_at IS NOT NULL)"
        " OR (status IN (3, 4) AND confirmed_amount = 0 AND returned_amount = amount"
        " AND overrun_amount = 0 AND settled_at IS NOT NULL)",
        name="status_consistent",
    ),
    # Paging through usage, and the spend limits' sums over a period (index-only: it
    # carries what they add up).
    Index(
        "ix_reservations_usage",
        "account_id",
        "created_at",
        "reservation_id",
        postgresql_include=["status", "amount", "confirmed_amount", "overrun_amount"],
    ),
    # The overruns settled in a spend period.
    Index(
        "ix_reservations_overrun",
        "account_id",
        "settled_at",
        postgresql_include=["overrun_amount"],
        postgresql_where=text("overrun_amount > 0"),
    ),
    Index(
        "ix_reservations_active_expiry",
        "account_id",
        "expires_at",
        postgresql_where=text("status = 1"),
    ),
    Index("ix_reservations_due", "expires_at", postgresql_where=text("status = 1")),
    # GetUsageSummary's windows: every account's, and one account's.
    Index(
        "ix_reservations_settled",
        "settled_at",
        postgresql_where=text("settled_at IS NOT NULL"),
    ),
    Index(
        "ix_reservations_account_settled",
        "account_id",
        "settled_at",
        postgresql_where=text("settled_at IS NOT NULL"),
    ),
)

# Which grants gave how much to a reservation, in burn-down order (burn_rank).
allocations = Table(
    "allocations",
    metadata,
    Column(
        "reservation_id",
        UUID(as_uuid=True),
        ForeignKey("reservations.reservation_id"),
        nullable=False,
    ),
    Column("grant_id", UUID(as_uuid=True), ForeignKey("grants.grant_id"), nullable=False),
    Column("account_id", Text, nullable=False),
    Column("burn_rank", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("returned_amount", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("reservation_id", "grant_id"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("returned_amount BETWEEN 0 AND amount", name="returned_bounded"),
    Index("ix_allocations_grant_id", "grant_id"),
)

revocations = Table(
    "revocations",
    metadata,
    Column("revocation_id", UUID(as_uuid=True), primary_key=True),
    Column("grant_id", UUID(as_uuid=True), ForeignKey("grants.grant_id"), nullable=False),
    Column("account_id", Text, nullable=False),
    Column("requested_amount", BigInteger, nullable=False),
    Column("revoked_amount", BigInteger, nullable=False),
    Column("unrecovered_amount", BigInteger, nullable=False),
    Column("cumulative_series", Text, nullable=True),
    Column("series_total", BigInteger, nullable=True),
    Column("reason", Text, nullable=False, server_default=text("''")),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    # What a call that lowered the grant's target gave back: revoked credits returned to
    # the grant, and outstanding debt cancelled.
    Column("restored_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("cancelled_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("withdraw", Boolean, nullable=False, server_default=text("false")),
    # The time of the fact the call stated (RevokeRequest.as_of), for the audit trail.
    Column("as_of", TIMESTAMPTZ, nullable=True),
    CheckConstraint(
        "requested_amount >= 0 AND revoked_amount >= 0 AND unrecovered_amount >= 0"
        " AND revoked_amount + unrecovered_amount = requested_amount",
        name="amounts_add_up",
    ),
    CheckConstraint(
        "restored_amount >= 0 AND cancelled_amount >= 0", name="given_back_non_negative"
    ),
    CheckConstraint("(cumulative_series IS NULL) = (series_total IS NULL)", name="series_complete"),
    Index("ix_revocations_series", "grant_id", "cumulative_series"),
)

# What revocations claim of a grant: one row per call without a series ("call:<id>"),
# one per series ("series:<name>") holding its highest total, or the total of its latest
# call by as_of (the time of the fact it stated; NULL when no call gave one). The grant
# owes the sum of the claims not withdrawn, at most its original amount.
revocation_claims = Table(
    "revocation_claims",
    metadata,
    Column("grant_id", UUID(as_uuid=True), ForeignKey("grants.grant_id"), nullable=False),
    Column("claim_key", Text, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("claimed_amount", BigInteger, nullable=False),
    Column("withdrawn", Boolean, nullable=False, server_default=text("false")),
    Column("as_of", TIMESTAMPTZ, nullable=True),
    PrimaryKeyConstraint("grant_id", "claim_key"),
    CheckConstraint("claimed_amount >= 0", name="claimed_non_negative"),
)

# Transfers between two accounts. A deferred constraint trigger (credits_check_transfer,
# created by migration 0006) checks at commit that each balances: its lots add up to its
# amount, and its entries take that from the source and give it to the destination.
transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", UUID(as_uuid=True), primary_key=True),
    Column("from_account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("to_account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("description", Text, nullable=False, server_default=text("''")),
    Column("caller", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("from_account_id <> to_account_id", name="two_accounts"),
    # The source's transfers, and what it transferred out in a spend period (index-only:
    # it carries what credits_spent_since adds up).
    Index(
        "ix_transfers_from_account_created",
        "from_account_id",
        "created_at",
        postgresql_include=["amount"],
    ),
    Index("ix_transfers_to_account_id", "to_account_id"),
)

# What one grant of a transfer's source gave (in burn-down order, burn_rank) and the
# TRANSFER grant it became on the destination: one destination grant per lot.
transfer_lots = Table(
    "transfer_lots",
    metadata,
    Column("transfer_id", UUID(as_uuid=True), ForeignKey("transfers.transfer_id"), nullable=False),
    Column("burn_rank", Integer, nullable=False),
    Column("source_grant_id", UUID(as_uuid=True), ForeignKey("grants.grant_id"), nullable=False),
    Column(
        "destination_grant_id",
        UUID(as_uuid=True),
        ForeignKey("grants.grant_id"),
        nullable=False,
        unique=True,
    ),
    Column("amount", BigInteger, nullable=False),
    PrimaryKeyConstraint("transfer_id", "source_grant_id"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("source_grant_id <> destination_grant_id", name="two_grants"),
)

# Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE, and the service's role may
# only INSERT and SELECT. The sum of an account's entries is the sum of its grants'
# remaining amounts, at every commit.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_id", Text, nullable=False),
    Column("grant_id", UUID(as_uuid=True), nullable=False),
    Column("reservation_id", UUID(as_uuid=True), nullable=True),
    Column("revocation_id", UUID(as_uuid=True), nullable=True),
    Column("kind", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    # The transfer that moved the credits: set exactly on its two kinds of entries.
    Column("transfer_id", UUID(as_uuid=True), ForeignKey("transfers.transfer_id"), nullable=True),
    CheckConstraint("amount <> 0", name="amount_non_zero"),
    CheckConstraint(
        "kind IN ('grant', 'reserve', 'release', 'confirm_return', 'reservation_expiry',"
        " 'grant_expiry', 'revoke', 'revoke_reversal', 'overrun', 'debt_repayment',"
        " 'transfer_out', 'transfer_in')",
        name="kind_known",
    ),
    CheckConstraint(
        "(kind IN ('transfer_out', 'transfer_in')) = (transfer_id IS NOT NULL)",
        name="transfer_entry_has_transfer",
    ),
    CheckConstraint(
        "(kind <> 'transfer_out' OR amount < 0) AND (kind <> 'transfer_in' OR amount > 0)",
        name="transfer_entry_sign",
    ),
    Index("ix_ledger_entries_account_id", "account_id"),
    Index(
        "ix_ledger_entries_transfer_id",
        "transfer_id",
        postgresql_where=text("transfer_id IS NOT NULL"),
    ),
)

# The outbox (docs/architecture.md, "Events"): one row per ledger change, written by the
# change's own transaction (credits_emit). Not the ledger: rows are deleted by age only
# (CREDITS_EVENT_RETENTION_DAYS), by credits_sweep_events. The stream's order is
# (stream_position, seq); stream_position is a transaction id, at least the writer's own.
ledger_events = Table(
    "ledger_events",
    metadata,
    Column("stream_position", BigInteger, nullable=False),
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column(
        "event_id", UUID(as_uuid=True), nullable=False, server_default=text("gen_random_uuid()")
    ),
    Column("event_type", Text, nullable=False),
    # NULL for a price event: prices belong to no account (check account_unless_price).
    Column("account_id", Text, nullable=True),
    Column("occurred_at", TIMESTAMPTZ, nullable=False),
    # The idempotency key's caller of the change; NULL for changes without one (Confirm,
    # Release, what time settles).
    Column("caller", Text, nullable=True),
    Column("grant_id", UUID(as_uuid=True), nullable=True),
    Column("reservation_id", UUID(as_uuid=True), nullable=True),
    Column("revocation_id", UUID(as_uuid=True), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("returned_amount", BigInteger, nullable=False),
    Column("unrecovered_amount", BigInteger, nullable=False),
    # The threshold a balance alert is about; NULL for every other event.
    Column("threshold", BigInteger, nullable=True),
    Column("available_after", BigInteger, nullable=False),
    # A price event's version, as SetPrice wrote it (set_at is occurred_at, set_by the
    # caller); NULL for every other event. Copied, so that the event reads alone.
    Column("job_type", Text, nullable=True),
    Column("price_version", BigInteger, nullable=True),
    Column("unit_price", BigInteger, nullable=True),
    Column("unit", Text, nullable=True),
    Column("effective_at", TIMESTAMPTZ, nullable=True),
    Column("reason", Text, nullable=True),
    PrimaryKeyConstraint("stream_position", "seq"),
    CheckConstraint(
        "amount >= 0 AND returned_amount >= 0 AND unrecovered_amount >= 0 AND available_after >= 0",
        name="amounts_non_negative",
    ),
    CheckConstraint(
        "event_type IN ('granted', 'reserved', 'confirmed', 'released', 'reservation_expired',"
        " 'grant_expired', 'revoked', 'revocation_withdrawn', 'account_settings_changed',"
        " 'balance_low', 'balance_depleted', 'balance_recovered', 'transfer_sent',"
        " 'price_set', 'price_retired')",
        name="event_type_known",
    ),
    CheckConstraint(
        "(account_id IS NULL) = (event_type IN ('price_set', 'price_retired'))",
        name="account_unless_price",
    ),
    CheckConstraint(
        "(job_type IS NOT NULL AND price_version IS NOT NULL AND unit IS NOT NULL"
        " AND effective_at IS NOT NULL AND reason IS NOT NULL)"
        " = (event_type IN ('price_set', 'price_retired'))"
        " AND (unit_price IS NOT NULL) = (event_type = 'price_set')",
        name="price_of_price_events",
    ),
    CheckConstraint(
        "(threshold IS NOT NULL) = (event_type IN ('balance_low', 'balance_recovered'))",
        name="threshold_of_alerts",
    ),
    Index("uq_ledger_events_event_id", "event_id", unique=True),
    Index("ix_ledger_events_account", "account_id", "stream_position", "seq"),
    # A job type's latest price event, where SetPrice places the next one. Partial: the
    # account events, nearly all of them, cost it nothing.
    Index(
        "ix_ledger_events_job_type",
        "job_type",
        "stream_position",
        postgresql_where=text("job_type IS NOT NULL"),
    ),
)

# The latest event cursor the retention sweep deleted: a cursor below it is too old.
event_retention = Table(
    "event_retention",
    metadata,
    Column("singleton", Boolean, primary_key=True),
    Column("deleted_through_position", BigInteger, nullable=False),
    Column("deleted_through_seq", BigInteger, nullable=False),
    CheckConstraint("singleton", name="one_row"),
)

# Webhook delivery state, one row per endpoint (service/webhooks.py): the cursor of the
# last event delivered (or given up on), and since when the next one has been failing.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("endpoint", Text, primary_key=True),
    Column("delivered_position", BigInteger, nullable=False),
    Column("delivered_seq", BigInteger, nullable=False),
    Column("failing_since", TIMESTAMPTZ, nullable=True),
    Column("updated_at", TIMESTAMPTZ, nullable=False),
)

# Idempotency keys are scoped to the calling service; the primary key makes a replay
# race impossible across processes and restarts.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("caller", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("request_hash", LargeBinary, nullable=False),
    Column("account_id", Text, nullable=False),
    Column("result_id", UUID(as_uuid=True), nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("caller", "idempotency_key"),
)
