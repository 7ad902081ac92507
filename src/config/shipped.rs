//! The shipped examples (a helpdesk endpoint and a vendor endpoint with their role capabilities,
//! and an authorization-rules file), embedded in the binary: `keyhole demo` serves them and
//! `keyhole init` writes them. One list, so the two never ship different examples.
#![forbid(unsafe_code)]

/// Endpoints and role capabilities, as (path relative to the configuration directory, content).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "endpoints/Helpdesk.toml",
        include_str!("../../endpoints/Helpdesk.toml"),
    ),
    (
        "endpoints/Vendor.toml",
        include_str!("../../endpoints/Vendor.toml"),
    ),
    (
        "role-capabilities/ServiceOperator.toml",
        include_str!("../../role-capabilities/ServiceOperator.toml"),
    ),
    (
        "role-capabilities/Diagnostics.toml",
        include_str!("../../role-capabilities/Diagnostics.toml"),
    ),
    (
        "role-capabilities/VendorReadOnly.toml",
        include_str!("../../role-capabilities/VendorReadOnly.toml"),
    ),
];

/// The shipped authorization rules, as (path, content).
pub const RULES: (&str, &str) = (
    "authorization-rules.toml",
    include_str!("../../authorization-rules.toml"),
);
