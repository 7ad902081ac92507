//! serde types for every configuration file (SPEC §2). Pure data; validation is in `validate`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written in humantime syntax ("90s", "20m", "1h 30m"); always > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub std::time::Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parsed = humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e}; write it like \"90s\", \"20m\" or \"1h 30m\""
            ))
        })?;
        if parsed.is_zero() {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} must be greater than zero"
            )));
        }
        Ok(Dur(parsed))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A positive integer (counts and sizes); zero is refused while deserializing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Positive(pub u64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v <= 0 {
            return Err(serde::de::Error::custom(format!(
                "must be a positive integer, got {v}"
            )));
        }
        Ok(Positive(v as u64))
    }
}

fn d_true() -> bool {
    true
}
fn s(v: &str) -> String {
    v.to_string()
}

/// `keyhole.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub computer_name: String,
    pub computer_aliases: Vec<String>,
    pub endpoints_dir: String,
    pub role_capabilities_dir: String,
    pub authorization_rules: String,
    pub users: String,
    pub transcript_directory: String,
    pub state_directory: String,
    pub winrs_endpoint: String,
    /// JSON-lines audit log (relative to the config directory); "" disables.
    pub audit_log: String,
    pub listener: ListenerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub console: ConsoleConfig,
    pub metrics: MetricsConfig,
}

/// `[console]`: the web console (PowerShell Web Access for keyhole endpoints), served on the
/// HTTPS listener only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve `https://HOST:PORT/console` (read at start: turning it on or off needs a restart).
    pub enabled: bool,
    /// Console sessions one user may hold at once (PowerShell Web Access: 3).
    pub max_sessions_per_user: Positive,
    /// A console session without a request from its user (and no command running) for this long
    /// is signed out and its programs killed (PowerShell Web Access: 20 minutes).
    pub idle_timeout: Dur,
    /// The computer name the sign-in form starts with (PSWA's `appSettings`); "" means
    /// `computer_name`.
    pub default_computer: String,
    /// The configuration (endpoint) name the sign-in form starts with; "" leaves it empty.
    pub default_configuration: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            max_sessions_per_user: Positive(3),
            idle_timeout: Dur(std::time::Duration::from_secs(20 * 60)),
            default_computer: String::new(),
            default_configuration: String::new(),
        }
    }
}

/// `[metrics]`: the Prometheus scrape listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `address:port` serving `GET /metrics` in the Prometheus text format; "" disables.
    pub listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            computer_name: String::new(),
            computer_aliases: Vec::new(),
            endpoints_dir: s("endpoints"),
            role_capabilities_dir: s("role-capabilities"),
            authorization_rules: s("authorization-rules.toml"),
            users: s("users.toml"),
            transcript_directory: s("transcripts"),
            state_directory: s("state"),
            winrs_endpoint: String::new(),
            audit_log: s("state/audit.jsonl"),
            listener: ListenerConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            console: ConsoleConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub https: String,
    pub http: String,
    pub tls_certificate: String,
    pub tls_private_key: String,
    pub client_ca: String,
    pub require_client_certificate: bool,
    pub allow_unencrypted: bool,
    pub ip_allow: Vec<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            https: s("127.0.0.1:5986"),
            http: s("127.0.0.1:5985"),
            tls_certificate: String::new(),
            tls_private_key: String::new(),
            client_ca: String::new(),
            require_client_certificate: false,
            allow_unencrypted: false,
            ip_allow: vec![s("0.0.0.0/0"), s("::/0")],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(default = "d_true")]
    pub basic: bool,
    pub pam_service: String,
    /// `WWW-Authenticate: Negotiate` (and `Kerberos`): SPNEGO with Kerberos and, if `ntlm`, NTLM.
    pub negotiate: bool,
    /// Kerberos acceptor keys (`HTTP/host`, `WSMAN/host`); "" turns Kerberos off (NTLM only).
    pub keytab: String,
    /// Realms whose principals map to local names; empty: the keytab's realms.
    pub realms: Vec<String>,
    /// NTLM for users.toml accounts that carry an NT hash.
    pub ntlm: bool,
    /// TLS channel bindings (`tls-server-end-point`) for Negotiate over HTTPS.
    pub channel_binding: ChannelBinding,
    pub max_failed_logins: Positive,
    pub lockout: Dur,
}

/// `[auth] channel_binding`: whether a Negotiate client must bind its authentication to the TLS
/// connection (RFC 5929 `tls-server-end-point`, the hash of the server's certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Bindings must be present and match; a client that sends none is refused.
    Required,
    /// Bindings a client sends must match; a client that sends none is accepted.
    #[default]
    WhenOffered,
    /// Bindings are not checked.
    Ignore,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            basic: true,
            pam_service: String::new(),
            negotiate: false,
            keytab: s("/etc/krb5.keytab"),
            realms: Vec::new(),
            ntlm: false,
            channel_binding: ChannelBinding::WhenOffered,
            max_failed_logins: Positive(5),
            lockout: Dur(std::time::Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_sessions_per_user: Positive,
    pub max_shells_per_user: Positive,
    pub max_concurrent_users: Positive,
    pub idle_timeout: Dur,
    pub max_envelope_size_kb: Positive,
    pub max_operation_timeout: Dur,
    pub command_timeout: Dur,
    /// Per pipeline: every program the line runs, counted together.
    pub max_output_bytes: Positive,
    /// Open connections, all listeners together, authenticated or not.
    pub max_connections: Positive,
    /// Open connections per client address (IPv6: per /64), authenticated or not.
    pub max_connections_per_address: Positive,
    /// TLS handshake and requests of a connection until one of them authenticates.
    pub unauthenticated_timeout: Dur,
    /// Per user: output produced and not yet received, across all of the user's shells.
    pub max_buffered_output_bytes: Positive,
    /// Per session: transcript bytes before output is summarized by byte counts.
    pub max_transcript_bytes: Positive,
    /// Free bytes below which a transcript directory refuses new sessions.
    pub transcript_min_free_bytes: Positive,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions_per_user: Positive(3),
            max_shells_per_user: Positive(30),
            max_concurrent_users: Positive(100),
            idle_timeout: Dur(std::time::Duration::from_secs(20 * 60)),
            max_envelope_size_kb: Positive(500),
            max_operation_timeout: Dur(std::time::Duration::from_secs(60)),
            command_timeout: Dur(std::time::Duration::from_secs(600)),
            max_output_bytes: Positive(16 * 1024 * 1024),
            max_connections: Positive(1000),
            max_connections_per_address: Positive(32),
            unauthenticated_timeout: Dur(std::time::Duration::from_secs(10)),
            max_buffered_output_bytes: Positive(64 * 1024 * 1024),
            max_transcript_bytes: Positive(100 * 1024 * 1024),
            transcript_min_free_bytes: Positive(1024 * 1024 * 1024),
        }
    }
}

/// `endpoints/<anything>.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub session_type: SessionType,
    #[serde(default = "default_language_mode")]
    pub language_mode: String,
    pub run_as: String,
    #[serde(default)]
    pub transcript_directory: String,
    #[serde(default)]
    pub required_groups: Option<GroupCondition>,
    #[serde(default)]
    pub max_sessions_per_user: Option<Positive>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleDefinition>,
}

fn default_language_mode() -> String {
    s("no-language")
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SessionType {
    #[default]
    RestrictedRemoteServer,
    Empty,
}

/// `required_groups = { and = [...] }` / `{ or = [...] }`, nested; a plain string is a group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum GroupCondition {
    Group(String),
    Tree(GroupTree),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum GroupTree {
    And(Vec<GroupCondition>),
    Or(Vec<GroupCondition>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleDefinition {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub role_capabilities: Vec<String>,
}

/// `role-capabilities/<Name>.toml`; the file stem is the capability's name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleCapabilityConfig {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub visible_cmdlets: Vec<VisibleCommandEntry>,
    #[serde(default)]
    pub visible_functions: Vec<VisibleCommandEntry>,
    #[serde(default)]
    pub visible_external_commands: Vec<ExternalCommandEntry>,
    #[serde(default)]
    pub visible_aliases: Vec<String>,
    /// Always an error (the interpreter has no providers); accepted by serde so that
    /// validation can say so precisely.
    #[serde(default)]
    pub visible_providers: Option<toml::Value>,
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionDef>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum VisibleCommandEntry {
    Name(String),
    Constrained(ConstrainedCommand),
}

impl VisibleCommandEntry {
    pub fn name(&self) -> &str {
        match self {
            VisibleCommandEntry::Name(n) => n,
            VisibleCommandEntry::Constrained(c) => &c.name,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConstrainedCommand {
    pub name: String,
    /// None: all parameters (same as the plain-string form).
    #[serde(default)]
    pub parameters: Option<Vec<ParameterConstraint>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParameterConstraint {
    pub name: String,
    #[serde(default)]
    pub validate_set: Option<Vec<String>>,
    #[serde(default)]
    pub validate_pattern: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ExternalCommandEntry {
    Path(String),
    Detailed(ExternalCommandDef),
}

impl ExternalCommandEntry {
    pub fn path(&self) -> &str {
        match self {
            ExternalCommandEntry::Path(p) => p,
            ExternalCommandEntry::Detailed(d) => &d.path,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalCommandDef {
    pub path: String,
    /// Each argument must fully match one of these (anchored, case-sensitive regexes).
    #[serde(default)]
    pub arguments: Vec<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_unsafe: bool,
    #[serde(default)]
    pub synopsis: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    #[serde(default)]
    pub synopsis: String,
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub output: OutputFormat,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_unsafe: bool,
    /// Declared parameters in file order.
    #[serde(default)]
    pub parameters: toml::Table,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Lines,
    Json,
    Table,
}

/// One `[functions.X.parameters.P]` table (validated from `FunctionDef::parameters`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionParam {
    #[serde(rename = "type", default = "default_param_type")]
    pub ty: FunctionParamType,
    #[serde(default)]
    pub mandatory: bool,
    #[serde(default)]
    pub position: Option<u32>,
    #[serde(default)]
    pub validate_set: Option<Vec<String>>,
    #[serde(default)]
    pub validate_pattern: Option<String>,
    #[serde(default)]
    pub help: String,
    /// A value that begins with `-` (a negative number, or any element of an array, included)
    /// is refused before the program runs unless this is true (SPEC §2.3): a program must never
    /// receive an option the administrator did not write.
    #[serde(default)]
    pub allow_leading_dash: bool,
}

fn default_param_type() -> FunctionParamType {
    FunctionParamType::String
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum FunctionParamType {
    #[serde(rename = "string")]
    String,
    #[serde(rename = "int")]
    Int,
    #[serde(rename = "bool")]
    Bool,
    #[serde(rename = "switch")]
    Switch,
    #[serde(rename = "string[]")]
    StringArray,
    #[serde(rename = "int[]")]
    IntArray,
}

/// `authorization-rules.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub computer_groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_group: Option<String>,
    pub configuration: String,
}

/// `users.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub password: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<String>,
    /// NTLM: the account's NT hash (MD4 of the UTF-16LE password) as 32 hexadecimal digits,
    /// written by `keyhole user passwd` while `[auth] ntlm = true`. Password-equivalent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nt_hash: Option<String>,
}
