-- Written by `python -m scripts.sqlmigration` from service/store/sql/ledger.sql: regenerate, do not edit.
DROP FUNCTION credits_usage_summary(text,timestamp with time zone,timestamp with time zone,integer);
