//! The durable spool (being built; see issue 8).
