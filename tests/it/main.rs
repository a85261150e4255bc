//! Integration tests: the real router (in-process or the real binary) on an ephemeral
//! loopback port, in front of a real HTTP mock upstream, driven by a real HTTP client.

mod support;

mod binary;
mod config_values;
mod db_files;
mod decoding;
mod dotenv;
mod early_head;
mod errors;
mod forms;
mod forwarding;
mod help;
mod http1;
mod http_edges;
mod models;
mod openai_sdk;
mod other_methods;
mod shutdown;
mod streaming;
mod telemetry;
mod upstream_messages;
mod upstream_tls;
mod users;
mod users_db_changes;
mod users_messages;
mod users_odd_names;
