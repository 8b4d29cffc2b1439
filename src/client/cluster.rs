//! `proglog cluster members`: the cluster's members as one node's gossip sees them.

use std::process::ExitCode;

use clap::Subcommand;
use proto::log::v1::{paths, ListMembersRequest, ListMembersResponse, MemberState};

use super::Conn;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// One line per member: NODE_ID NAME GOSSIP_ADDR RPC_ADDR STATE GENERATION
    /// (states: up, suspect, down, left)
    Members {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Members { conn } => members(conn).await,
    }
}

fn state_name(s: i32) -> &'static str {
    match MemberState::try_from(s) {
        Ok(MemberState::Up) => "up",
        Ok(MemberState::Suspect) => "suspect",
        Ok(MemberState::Down) => "down",
        Ok(MemberState::Left) => "left",
        _ => "unknown",
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

async fn members(conn: Conn) -> anyhow::Result<ExitCode> {
    let ch = conn.connect().await?;
    let resp: ListMembersResponse = ch
        .unary_prost(paths::LIST_MEMBERS, &ListMembersRequest {}, conn.opts())
        .await?;
    if conn.json {
        for m in &resp.members {
            println!(
                "{}",
                serde_json::json!({
                    "node_id": m.node_id,
                    "name": m.name,
                    "gossip_addr": m.gossip_addr,
                    "rpc_addr": m.rpc_addr,
                    "state": state_name(m.state),
                    "generation": m.generation,
                    "renewal": m.renewal,
                    "in_state_ms": m.in_state_ms,
                    "is_self": m.is_self,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = resp
        .members
        .iter()
        .map(|m| {
            [
                m.node_id.clone(),
                or_dash(&m.name).to_owned(),
                or_dash(&m.gossip_addr).to_owned(),
                m.rpc_addr.clone(),
                state_name(m.state).to_owned(),
                m.generation.to_string(),
            ]
        })
        .collect();
    let header = [
        "NODE_ID",
        "NAME",
        "GOSSIP_ADDR",
        "RPC_ADDR",
        "STATE",
        "GENERATION",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{out}");
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if !resp.gossip {
        eprintln!("(this node runs no gossip: start it with --bind-addr or --start-join-addrs)");
    }
    Ok(ExitCode::SUCCESS)
}
