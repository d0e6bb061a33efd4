//! The OPC UA half of compiling a tag map: the server connection, node ids and monitoring.

use super::*;

impl Compiler<'_> {
    pub(super) fn opcua_source(&mut self, o: &OpcUaSourceSpec) -> Option<OpcUaPlan> {
        if !o.endpoint.starts_with("opc.tcp://") {
            return self.err(
                o.endpoint.pos,
                format!("{} is not an OPC UA endpoint", shown(&o.endpoint.value)),
                "write it as opc.tcp://host:port, e.g. opc.tcp://10.0.0.5:4840",
            );
        }
        // Secure by default: no security must be asked for by name.
        let policy = o.security_policy.unwrap_or(SecurityPolicy::Basic256Sha256);
        let mode = o
            .security_mode
            .unwrap_or(if policy == SecurityPolicy::None {
                SecurityMode::None
            } else {
                SecurityMode::SignAndEncrypt
            });
        if (policy == SecurityPolicy::None) != (mode == SecurityMode::None) {
            return self.err(
                o.endpoint.pos,
                format!("security_policy {policy:?} does not go with security_mode {mode:?}"),
                "use policy none with mode none, or a real policy with sign or sign_and_encrypt",
            );
        }
        let user = match &o.user {
            None | Some(OpcUaUser::Anonymous) => UserPlan::Anonymous,
            Some(OpcUaUser::Username {
                username,
                password_env,
                password_file,
            }) => {
                let password = match (password_env, password_file) {
                    (Some(env), None) => SecretSource::Env(env.clone()),
                    (None, Some(file)) => SecretSource::File(self.path(file)),
                    _ => return self.err(
                        o.endpoint.pos,
                        "user `username` needs exactly one of `password_env` or `password_file`",
                        "passwords are never written in tag maps",
                    ),
                };
                UserPlan::Username {
                    username: username.clone(),
                    password,
                }
            }
            Some(OpcUaUser::Certificate { cert, key }) => UserPlan::Certificate {
                cert: self.path(cert),
                key: self.path(key),
            },
        };
        Some(OpcUaPlan {
            endpoint: o.endpoint.value.clone(),
            security_policy: policy,
            security_mode: mode,
            user,
            publishing_interval: o
                .publishing_interval
                .map(|s| s.as_duration())
                .unwrap_or(DEFAULT_INTERVAL),
            pki_dir: o.pki_dir.as_deref().map(|p| self.path(p)),
            trust_on_first_use: o.trust_on_first_use,
            timestamps: o.timestamps.unwrap_or_default(),
            uncertain: o.uncertain.unwrap_or_default(),
            max_items_per_subscription: o.max_items_per_subscription.unwrap_or(0),
            max_notifications_per_publish: o
                .max_notifications_per_publish
                .unwrap_or(DEFAULT_MAX_NOTIFICATIONS_PER_PUBLISH),
            monitoring: Vec::new(),
            certificate: Default::default(),
            events: Vec::new(),
            structures: Default::default(),
        })
    }

    /// OPC UA monitoring settings of one tag.
    pub(super) fn monitoring(&mut self, tag: &TagSpec) -> Option<MonitoringPlan> {
        if let Some(q) = &tag.queue_size {
            if q.value == 0 {
                return self.err(
                    q.pos,
                    "queue_size must be at least 1",
                    "leave it out for a queue sized to the publishing interval",
                );
            }
        }
        if let Some(d) = &tag.server_deadband {
            let bad = match d.value {
                ServerDeadband::Absolute(v) => !(v.is_finite() && v >= 0.0),
                ServerDeadband::Percent(v) => !(0.0..=100.0).contains(&v),
            };
            if bad {
                return self.err(
                    d.pos,
                    "server_deadband is out of range",
                    "absolute must be 0 or more, percent between 0 and 100",
                );
            }
        }
        if let Some(e) = &tag.elements {
            if !(1..=100_000).contains(&e.value) {
                return self.err(
                    e.pos,
                    "elements must be between 1 and 100000",
                    "the number of array elements to read, each as `sensor_id[i]`",
                );
            }
        }
        Some(MonitoringPlan {
            index: None,
            queue_size: tag.queue_size.as_ref().map(|q| q.value),
            trigger: tag.trigger,
            deadband: tag.server_deadband.as_ref().map(|d| d.value),
        })
    }

    pub(super) fn opcua_address(&mut self, tag: &Spanned<TagSpec>) -> Option<String> {
        self.foreign_keys(tag, false);
        let Some(node) = &tag.node else {
            return self.err(
                tag.pos,
                "missing required key `node`",
                "OPC UA tags name their node, e.g. `node: ns=2;s=Line1/Compressor7/VibeX`",
            );
        };
        let text = node.trim();
        // `nsu=<namespace URI>;<id>` is kept as written: the source resolves the URI to the
        // server's namespace index when it connects (OPC UA Part 6, 5.3.1.11).
        let checked = match text.strip_prefix("nsu=").and_then(|r| r.split_once(';')) {
            Some((uri, id)) if !uri.is_empty() => {
                ::opcua::types::NodeId::from_str(&format!("ns=1;{id}")).map(|_| text.to_string())
            }
            _ => ::opcua::types::NodeId::from_str(text).map(|id| id.to_string()),
        };
        match checked {
            Ok(id) => Some(id),
            Err(_) => self.err(
                node.pos,
                format!("{} is not an OPC UA node id", shown(&node.value)),
                "write ns=<index>;s=<name>, nsu=<namespace URI>;s=<name>, ns=<index>;i=<number>, ns=<index>;g=<guid> or ns=<index>;b=<base64>",
            ),
        }
    }
}
