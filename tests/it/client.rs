//! Coverage through the `etcd-client` crate: the same calls against etcd directly and
//! through cutover must give the same results.

use crate::support::{client, Etcd, Proxy};

#[tokio::test]
async fn put_get_through_the_proxy() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start_for(&[&etcd]).await;
    let mut c = client(&proxy.endpoint).await;
    c.put("a", "1", None).await.unwrap();
    let r = c.get("a", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"1");
}
