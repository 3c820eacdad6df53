//! What kvsctl prints, in both formats. Scripts parse this, so the shapes are part of the CLI
//! contract: rendering is kept in pure functions returning the bytes to print, one per result
//! kind, each showing its simple and its JSON form side by side.

use base64::Engine;
use kvs_client::backup::BackupSummary;
use kvs_client::proto::{self, Role};
use kvs_client::{EndpointStatus, KeyValue};
use serde_json::{Value, json};

use crate::args::Format;

/// `get`: the raw value and a newline, nothing when absent; JSON `{"key","value"}` (plus
/// `value_base64` when the value is not UTF-8) or `null`.
pub(crate) fn value(format: Format, kv: Option<&KeyValue>) -> Vec<u8> {
    match (format, kv) {
        (Format::Simple, None) => Vec::new(),
        (Format::Simple, Some(kv)) => [kv.value.as_ref(), b"\n"].concat(),
        (Format::Json, None) => json_line(&Value::Null),
        (Format::Json, Some(kv)) => {
            let mut object = json!({
                "key": String::from_utf8_lossy(&kv.key),
                "value": String::from_utf8_lossy(&kv.value),
            });
            if std::str::from_utf8(&kv.value).is_err() {
                object["value_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&kv.value)
                    .into();
            }
            json_line(&object)
        }
    }
}

/// `put`, `member promote`, `member remove`: `OK` or `{"ok":true}`.
pub(crate) fn ok(format: Format) -> Vec<u8> {
    match format {
        Format::Simple => b"OK\n".to_vec(),
        Format::Json => json_line(&json!({ "ok": true })),
    }
}

/// `member transfer`: the new leader's ID, or `{"leader":"ID"}`.
pub(crate) fn leader(format: Format, leader: &str) -> Vec<u8> {
    match format {
        Format::Simple => format!("{leader}\n").into_bytes(),
        Format::Json => json_line(&json!({ "leader": leader })),
    }
}

/// `del`: the number of keys deleted, `1` or `0`, or `{"deleted":n}`.
pub(crate) fn deleted(format: Format, deleted: bool) -> Vec<u8> {
    let count = u8::from(deleted);
    match format {
        Format::Simple => format!("{count}\n").into_bytes(),
        Format::Json => json_line(&json!({ "deleted": count })),
    }
}

/// `cas`: `OK` when it succeeded (a failed compare is reported as an error, on stderr), or
/// `{"succeeded":bool}` either way.
pub(crate) fn swapped(format: Format, succeeded: bool) -> Vec<u8> {
    match format {
        Format::Simple if succeeded => b"OK\n".to_vec(),
        Format::Simple => Vec::new(),
        Format::Json => json_line(&json!({ "succeeded": succeeded })),
    }
}

/// `member list`: a table, or `{"members":[...]}`.
pub(crate) fn members(format: Format, members: &[proto::Member]) -> Vec<u8> {
    match format {
        Format::Simple => member_table(members),
        Format::Json => json_line(&json!({
            "members": members.iter().map(member_json).collect::<Vec<_>>()
        })),
    }
}

/// `member add`: the member as one table row, or its JSON object.
pub(crate) fn member(format: Format, member: &proto::Member) -> Vec<u8> {
    match format {
        Format::Simple => member_table(std::slice::from_ref(member)),
        Format::Json => json_line(&member_json(member)),
    }
}

/// `status`: one `name: value` line per field, or the status as a JSON object.
pub(crate) fn status(format: Format, status: &proto::StatusResponse) -> Vec<u8> {
    match format {
        Format::Simple => table(
            &[],
            vec![
                vec!["cluster id:".into(), or_dash(&status.cluster_id)],
                vec!["leader:".into(), or_dash(&status.leader)],
                vec!["term:".into(), status.term.to_string()],
                vec!["commit index:".into(), status.commit_index.to_string()],
                vec!["applied index:".into(), status.applied_index.to_string()],
                vec!["answered by:".into(), or_dash(&status.node_id)],
                vec!["alarms:".into(), or_dash(&status.alarms.join(","))],
                vec!["keys:".into(), status.keys.to_string()],
                vec![
                    "clock skew:".into(),
                    format!("{:+} ms", status.clock_skew_ms),
                ],
                vec!["data dir:".into(), data_dir(status)],
            ],
        ),
        Format::Json => json_line(&json!({
            "cluster_id": status.cluster_id,
            "leader": status.leader,
            "term": status.term,
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "alarms": status.alarms,
            "keys": status.keys,
            "clock_skew_ms": status.clock_skew_ms,
            "data_dir_bytes": status.data_dir_bytes,
            "data_dir_free_bytes": status.data_dir_free_bytes,
        })),
    }
}

/// `412.3 MiB used, 3.1 GiB free`, or `-` for an in-memory node.
fn data_dir(status: &proto::StatusResponse) -> String {
    match (status.data_dir_bytes, status.data_dir_free_bytes) {
        (Some(used), Some(free)) => {
            format!("{} used, {} free", binary_size(used), binary_size(free))
        }
        _ => "-".into(),
    }
}

/// A byte count in the largest binary unit that keeps it at least 1, to one decimal.
fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `snapshot save|status|restore`: `note` (when not empty) on a line of its own and a one-row
/// table, or `{"keys","bytes","last_index","last_term","checksum","cluster_id","taken_at_ms"}`
/// (plus `"note"`).
pub(crate) fn backup(format: Format, summary: &BackupSummary, note: &str) -> Vec<u8> {
    match format {
        Format::Simple => {
            let mut out = if note.is_empty() {
                Vec::new()
            } else {
                format!("{note}\n").into_bytes()
            };
            out.extend(table(
                &[
                    "CHECKSUM",
                    "KEYS",
                    "BYTES",
                    "LAST INDEX",
                    "LAST TERM",
                    "CLUSTER ID",
                ],
                vec![vec![
                    summary.checksum_hex(),
                    summary.keys.to_string(),
                    summary.bytes.to_string(),
                    summary.header.last_index.to_string(),
                    summary.header.last_term.to_string(),
                    or_dash(&summary.header.cluster_id),
                ]],
            ));
            out
        }
        Format::Json => {
            let mut object = json!({
                "keys": summary.keys,
                "bytes": summary.bytes,
                "last_index": summary.header.last_index,
                "last_term": summary.header.last_term,
                "checksum": summary.checksum_hex(),
                "cluster_id": summary.header.cluster_id,
                "taken_at_ms": summary.header.taken_at_ms,
            });
            if !note.is_empty() {
                object["note"] = note.into();
            }
            json_line(&object)
        }
    }
}

/// `endpoint status`: a table with one row per endpoint, or a JSON array of the nodes' info
/// (`{"endpoint","error"}` for an endpoint that did not answer).
pub(crate) fn endpoints(format: Format, statuses: &[EndpointStatus]) -> Vec<u8> {
    match format {
        Format::Simple => table(
            &[
                "ENDPOINT",
                "NODE ID",
                "ROLE",
                "MEMBER",
                "LEADER",
                "APPLIED",
                "DURABLE",
                "CLUSTER ID",
                "ERROR",
            ],
            statuses
                .iter()
                .map(|status| match &status.info {
                    Ok(info) => vec![
                        status.endpoint.clone(),
                        or_dash(&info.node_id),
                        or_dash(&info.role),
                        yes_no(info.is_member),
                        or_dash(&info.leader),
                        info.applied_index.to_string(),
                        yes_no(info.durable),
                        or_dash(&info.cluster_id),
                        String::new(),
                    ],
                    Err(err) => {
                        let mut row = vec![status.endpoint.clone()];
                        row.extend(std::iter::repeat_n("-".to_owned(), 7));
                        row.push(err.to_string());
                        row
                    }
                })
                .collect(),
        ),
        Format::Json => json_line(&Value::Array(
            statuses
                .iter()
                .map(|status| match &status.info {
                    Ok(info) => json!({
                        "endpoint": status.endpoint,
                        "node_id": info.node_id,
                        "cluster_id": info.cluster_id,
                        "address": info.address,
                        "peer_address": info.peer_address,
                        "is_member": info.is_member,
                        "role": info.role,
                        "durable": info.durable,
                        "applied_index": info.applied_index,
                        "leader": info.leader,
                    }),
                    Err(err) => json!({
                        "endpoint": status.endpoint,
                        "error": err.to_string(),
                    }),
                })
                .collect(),
        )),
    }
}

fn member_table(members: &[proto::Member]) -> Vec<u8> {
    table(
        &[
            "ID",
            "ADDRESS",
            "PEER ADDRESS",
            "ROLE",
            "LEADER",
            "MATCHED",
            "LAG",
        ],
        members
            .iter()
            .map(|member| {
                vec![
                    member.id.clone(),
                    member.address.clone(),
                    member.peer_address.clone(),
                    role_name(member.role()).to_owned(),
                    yes_no(member.is_leader),
                    member.matched_index.to_string(),
                    member.lag.to_string(),
                ]
            })
            .collect(),
    )
}

fn member_json(member: &proto::Member) -> Value {
    json!({
        "id": member.id,
        "address": member.address,
        "peer_address": member.peer_address,
        "role": role_name(member.role()),
        "is_leader": member.is_leader,
        "matched_index": member.matched_index,
        "lag": member.lag,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::Learner => "learner",
        Role::Unspecified => "unknown",
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-" } else { text }.to_owned()
}

/// Left-aligned columns two spaces apart, under an optional header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<u8> {
    let header: Vec<String> = header.iter().map(|&cell| cell.to_owned()).collect();
    let lines: Vec<Vec<String>> = (!header.is_empty())
        .then_some(header)
        .into_iter()
        .chain(rows)
        .collect();
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            lines
                .iter()
                .filter_map(|line| line.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in &lines {
        let mut rendered = String::new();
        for (cell, width) in line.iter().zip(&widths) {
            rendered.push_str(&format!("{cell:<width$}  "));
        }
        text.push_str(rendered.trim_end());
        text.push('\n');
    }
    text.into_bytes()
}

fn json_line(value: &Value) -> Vec<u8> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[test]
    fn get_prints_the_raw_value_or_nothing() {
        let kv = KeyValue {
            key: "k".into(),
            value: "hello".into(),
            expires_at_ms: None,
        };
        assert_eq!(value(Format::Simple, Some(&kv)), b"hello\n");
        assert_eq!(value(Format::Simple, None), b"");
        assert_eq!(parsed(value(Format::Json, None)), Value::Null);
        assert_eq!(
            parsed(value(Format::Json, Some(&kv))),
            json!({"key": "k", "value": "hello"})
        );
    }

    #[test]
    fn non_utf8_values_also_come_as_base64() {
        let kv = KeyValue {
            key: "k".into(),
            value: vec![0xff, 0x00, 0x41].into(),
            expires_at_ms: None,
        };
        let json = parsed(value(Format::Json, Some(&kv)));
        assert_eq!(json["value_base64"], "/wBB");
        assert_eq!(json["value"], "\u{fffd}\u{0}A");
    }

    #[test]
    fn a_transfer_prints_the_new_leader() {
        assert_eq!(
            leader(Format::Simple, "00000000000000aa"),
            b"00000000000000aa\n"
        );
        let json = parsed(leader(Format::Json, "00000000000000aa"));
        assert_eq!(json["leader"], "00000000000000aa");
    }

    #[test]
    fn members_show_roles_by_name() {
        let member = proto::Member {
            id: "00000000000000aa".into(),
            address: "n1:7379".into(),
            peer_address: "n1:7380".into(),
            role: Role::Learner.into(),
            is_leader: false,
            matched_index: 7,
            lag: 3,
        };
        let json = parsed(members(Format::Json, std::slice::from_ref(&member)));
        assert_eq!(json["members"][0]["role"], "learner");
        assert_eq!(json["members"][0]["id"], "00000000000000aa");
        let text = String::from_utf8(members(Format::Simple, &[member])).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("ID "));
        assert!(lines.next().unwrap().contains("learner"));
    }

    #[test]
    fn status_shows_the_data_directory_or_a_dash_in_memory() {
        let mut status = proto::StatusResponse {
            data_dir_bytes: Some(412 << 20),
            data_dir_free_bytes: Some(3 << 30),
            ..Default::default()
        };
        let text = String::from_utf8(super::status(Format::Simple, &status)).unwrap();
        assert!(
            text.contains("412.0 MiB used, 3.0 GiB free"),
            "status text: {text}"
        );
        let json = parsed(super::status(Format::Json, &status));
        assert_eq!(json["data_dir_bytes"], 412 << 20);
        assert_eq!(json["data_dir_free_bytes"], 3u64 << 30);
        status.data_dir_bytes = None;
        status.data_dir_free_bytes = None;
        let text = String::from_utf8(super::status(Format::Simple, &status)).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("data dir:") && l.ends_with('-')),
            "status text: {text}"
        );
        assert_eq!(binary_size(1000), "1000 B");
    }

    #[test]
    fn tables_align_columns() {
        let text = String::from_utf8(table(
            &["A", "B"],
            vec![
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        ))
        .unwrap();
        assert_eq!(text, "A     B\nlong  x\ns     y\n");
    }
}
