//! End-to-end tests: the real application on port 0 against real stores (SQLite files and the
//! PostgreSQL server on 127.0.0.1:5432). One binary, one module per capability.

// Test helpers are `pub` for the sibling modules of this one test crate.
#![allow(unreachable_pub)]

mod amqp;
mod campaigns;
mod cdp;
mod crm;
mod dispatch;
mod extracts;
mod helpers;
mod leads;
mod maintenance;
mod ops;
mod rest_ingest;
mod sftp;
mod soap;
mod store_conformance;
mod ui;
mod ui_browser;
mod ui_sessions;
