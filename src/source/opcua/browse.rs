//! Browsing a server into a tag map skeleton (being built).
