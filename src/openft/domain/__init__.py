"""The rules of a fine-tuning job that every layer shares, with no I/O: its statuses and the one table of legal
transitions (`job_states`), and the order in which queued jobs are claimed (`claim_order`).

Both `db` (which writes statuses) and `jobs` (which decides when to ask) import this package; neither imports
the other's decisions, so a rule lives here once (docs/design.md §2).
"""
