//! Service discovery: providers that yield [`super::TargetGroup`]s and update them as
//! endpoints come and go.

pub mod etcd;
