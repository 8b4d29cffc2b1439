//! `Produce`: append one record, reply with its offset once durable per the topic's policy.

use std::rc::Rc;

use net::server::Request;
use net::Status;
use proto::log::v1::{ProduceRequest, ProduceResponse};

use super::acl::Action;
use super::append;
use super::records;
use super::state::ShardState;

pub async fn handle(
    state: Rc<ShardState>,
    req: Request<ProduceRequest>,
) -> Result<ProduceResponse, Status> {
    state.authorize(&req, Action::Produce, Some(&req.message.topic))?;
    let r = req.message;
    let record = records::required(r.record)?;
    let batch = records::encode([&record])?;
    let id = records::partition_id(&r.topic, r.partition);
    let appended = append::append(&*state.partitions, &id, batch).await?;
    Ok(ProduceResponse {
        offset: appended.base_offset,
    })
}
