//! cutover's own auth store (`cutover::rbac`, which the gateway decides requests with)
//! against etcd itself: the same Auth API calls, made as the same users (client
//! certificates, as Kamaji's controller and tenants connect), must give the same answers,
//! and every request a tenant makes must be allowed or refused alike.

use std::path::Path;

use bytes::Bytes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use cutover::proto::authpb::permission::Type as PermType;
use cutover::proto::authpb::{Permission, UserAddOptions};
use cutover::proto::etcdserverpb::auth_client::AuthClient;
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::*;
use cutover::rbac::{Caller, Store};

use crate::support::{Etcd, EtcdOptions, TlsFiles};

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("pem")
}

async fn channel_as(etcd: &Etcd, tls: &TlsFiles, cert: &Path, key: &Path) -> Channel {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(&tls.ca)))
        .identity(Identity::from_pem(pem(cert), pem(key)));
    Endpoint::from_shared(format!("https://{}", etcd.endpoint))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .expect("connect over TLS")
}

/// An outcome as compared: `ok` with what the answer carries, or the status.
fn outcome<T>(r: Result<T, Status>, show: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", show(v)),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn store_outcome<T>(r: Result<T, cutover::rbac::AuthError>, show: impl FnOnce(T) -> String) -> String {
    outcome(r.map_err(|e| cutover::error::ProxyError::from(e).to_status()), show)
}

fn perm(t: PermType, key: &str, end: &str) -> Permission {
    Permission {
        perm_type: t as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
    }
}

fn show_perms(perms: Vec<Permission>) -> String {
    let mut shown: Vec<String> = perms
        .iter()
        .map(|p| format!("{}:{:?}..{:?}", p.perm_type, p.key, p.range_end))
        .collect();
    // etcd does not order permissions with the same key among themselves.
    shown.sort();
    shown.join(",")
}

/// One Auth call, made on etcd as `on` and on the store as `caller`; both outcomes.
macro_rules! both {
    ($log:ident, $store:ident, $on:expr, $caller:expr, $what:expr, |$c:ident| $call:expr, |$s:ident| $model:expr, $show:expr) => {{
        let mut $c = $on.clone();
        let etcd = outcome($call.await.map(|r| r.into_inner()), $show);
        let $s = &mut $store;
        let _: Caller = $caller;
        let model = store_outcome($model, |v| v);
        $log.push(($what.to_string(), etcd, model));
    }};
}

#[tokio::test]
async fn the_auth_store_answers_as_etcd_does_for_kamajis_calls_and_a_tenants_requests() {
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some((tls.server_cert.clone(), tls.server_key.clone(), tls.ca.clone())),
        client_auth: true,
    })
    .await;
    let root_ch = channel_as(&etcd, &tls, &tls.client_cert, &tls.client_key).await;
    let tenant_ch = channel_as(&etcd, &tls, &tls.tenant_cert, &tls.tenant_key).await;
    let root = AuthClient::new(root_ch.clone());
    let tenant = AuthClient::new(tenant_ch.clone());
    let as_root: Caller = Some("root");
    let as_tenant: Caller = Some("tenant-a");
    let mut store = Store::default();
    let mut log: Vec<(String, String, String)> = Vec::new();
    let no_pw = Some(UserAddOptions { no_password: true });
    let roles = |r: AuthUserGetResponse| r.roles.join(",");

    // Auth on, as etcd's docs have it for certificate users: root with the root role.
    both!(
        log,
        store,
        root,
        as_root,
        "UserAdd root",
        |c| c.user_add(AuthUserAddRequest {
            name: "root".into(),
            options: no_pw,
            ..Default::default()
        }),
        |s| s.user_add(as_root, "root", true).map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "AuthEnable without the root role",
        |c| c.auth_enable(AuthEnableRequest {}),
        |s| s.auth_enable(as_root).map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGrantRole root root",
        |c| c.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into()
        }),
        |s| s.user_grant_role(as_root, "root", "root").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "AuthEnable",
        |c| c.auth_enable(AuthEnableRequest {}),
        |s| s.auth_enable(as_root).map(|_| String::new()),
        |_| String::new()
    );

    // Kamaji's setup of tenant "a" with user "tenant-a" (the tenant certificate's CN).
    both!(
        log,
        store,
        root,
        as_root,
        "UserGet absent",
        |c| c.user_get(AuthUserGetRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_get(as_root, "tenant-a").map(|r| r.join(",")),
        roles
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserAdd tenant-a",
        |c| c.user_add(AuthUserAddRequest {
            name: "tenant-a".into(),
            password: "ignored".into(),
            options: no_pw,
            ..Default::default()
        }),
        |s| s.user_add(as_root, "tenant-a", true).map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleGet absent",
        |c| c.role_get(AuthRoleGetRequest { role: "a".into() }),
        |s| s.role_get(as_root, "a").map(show_perms),
        |r: AuthRoleGetResponse| show_perms(r.perm)
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleAdd a",
        |c| c.role_add(AuthRoleAddRequest { name: "a".into() }),
        |s| s.role_add(as_root, "a").map(|_| String::new()),
        |_| String::new()
    );
    let prefix = perm(PermType::Readwrite, "/a/", "/a0");
    both!(
        log,
        store,
        root,
        as_root,
        "RoleGrantPermission a",
        |c| c.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "a".into(),
            perm: Some(prefix.clone())
        }),
        |s| s
            .role_grant_permission(as_root, "a", Some(prefix.clone()))
            .map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGrantRole tenant-a a",
        |c| c.user_grant_role(AuthUserGrantRoleRequest {
            user: "tenant-a".into(),
            role: "a".into()
        }),
        |s| s.user_grant_role(as_root, "tenant-a", "a").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGet tenant-a",
        |c| c.user_get(AuthUserGetRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_get(as_root, "tenant-a").map(|r| r.join(",")),
        roles
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleGet a",
        |c| c.role_get(AuthRoleGetRequest { role: "a".into() }),
        |s| s.role_get(as_root, "a").map(show_perms),
        |r: AuthRoleGetResponse| show_perms(r.perm)
    );

    // What goes wrong, as root.
    both!(
        log,
        store,
        root,
        as_root,
        "UserAdd again",
        |c| c.user_add(AuthUserAddRequest {
            name: "tenant-a".into(),
            options: no_pw,
            ..Default::default()
        }),
        |s| s.user_add(as_root, "tenant-a", true).map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserAdd empty",
        |c| c.user_add(AuthUserAddRequest {
            options: no_pw,
            ..Default::default()
        }),
        |s| s.user_add(as_root, "", true).map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleAdd again",
        |c| c.role_add(AuthRoleAddRequest { name: "a".into() }),
        |s| s.role_add(as_root, "a").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleAdd empty",
        |c| c.role_add(AuthRoleAddRequest { name: "".into() }),
        |s| s.role_add(as_root, "").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGrantRole missing user",
        |c| c.user_grant_role(AuthUserGrantRoleRequest {
            user: "nobody".into(),
            role: "a".into()
        }),
        |s| s.user_grant_role(as_root, "nobody", "a").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGrantRole missing role",
        |c| c.user_grant_role(AuthUserGrantRoleRequest {
            user: "tenant-a".into(),
            role: "nope".into()
        }),
        |s| s.user_grant_role(as_root, "tenant-a", "nope").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserRevokeRole not granted",
        |c| c.user_revoke_role(AuthUserRevokeRoleRequest {
            name: "tenant-a".into(),
            role: "root".into()
        }),
        |s| s.user_revoke_role(as_root, "tenant-a", "root").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserRevokeRole root root",
        |c| c.user_revoke_role(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into()
        }),
        |s| s.user_revoke_role(as_root, "root", "root").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserDelete root",
        |c| c.user_delete(AuthUserDeleteRequest { name: "root".into() }),
        |s| s.user_delete(as_root, "root").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleDelete root",
        |c| c.role_delete(AuthRoleDeleteRequest { role: "root".into() }),
        |s| s.role_delete(as_root, "root").map(|_| String::new()),
        |_| String::new()
    );
    // etcd 3.4 neither checks a granted range nor a missing permission (and a missing
    // one brings the 3.4 server down): the store follows 3.5, compared on 3.5 only.
    if crate::support::etcd_version().starts_with("3.5") {
        let backwards = perm(PermType::Read, "/a/z", "/a/b");
        both!(
            log,
            store,
            root,
            as_root,
            "RoleGrantPermission backwards",
            |c| c.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "a".into(),
                perm: Some(backwards.clone())
            }),
            |s| s
                .role_grant_permission(as_root, "a", Some(backwards.clone()))
                .map(|_| String::new()),
            |_| String::new()
        );
        both!(
            log,
            store,
            root,
            as_root,
            "RoleGrantPermission none",
            |c| c.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "a".into(),
                perm: None
            }),
            |s| s.role_grant_permission(as_root, "a", None).map(|_| String::new()),
            |_| String::new()
        );
    }
    both!(
        log,
        store,
        root,
        as_root,
        "RoleRevokePermission not granted",
        |c| c.role_revoke_permission(AuthRoleRevokePermissionRequest {
            role: "a".into(),
            key: Bytes::from_static(b"/x"),
            range_end: Bytes::new()
        }),
        |s| s
            .role_revoke_permission(as_root, "a", b"/x", b"")
            .map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleGet root",
        |c| c.role_get(AuthRoleGetRequest { role: "root".into() }),
        |s| s.role_get(as_root, "root").map(show_perms),
        |r: AuthRoleGetResponse| show_perms(r.perm)
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserList",
        |c| c.user_list(AuthUserListRequest {}),
        |s| s.user_list(as_root).map(|r| r.join(",")),
        |r: AuthUserListResponse| r.users.join(",")
    );
    both!(
        log,
        store,
        root,
        as_root,
        "RoleList",
        |c| c.role_list(AuthRoleListRequest {}),
        |s| s.role_list(as_root).map(|r| r.join(",")),
        |r: AuthRoleListResponse| r.roles.join(",")
    );

    // What the tenant may see of the auth store.
    both!(
        log,
        store,
        tenant,
        as_tenant,
        "tenant UserGet self",
        |c| c.user_get(AuthUserGetRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_get(as_tenant, "tenant-a").map(|r| r.join(",")),
        roles
    );
    both!(
        log,
        store,
        tenant,
        as_tenant,
        "tenant UserGet root",
        |c| c.user_get(AuthUserGetRequest { name: "root".into() }),
        |s| s.user_get(as_tenant, "root").map(|r| r.join(",")),
        roles
    );
    both!(
        log,
        store,
        tenant,
        as_tenant,
        "tenant RoleGet own",
        |c| c.role_get(AuthRoleGetRequest { role: "a".into() }),
        |s| s.role_get(as_tenant, "a").map(show_perms),
        |r: AuthRoleGetResponse| show_perms(r.perm)
    );
    both!(
        log,
        store,
        tenant,
        as_tenant,
        "tenant UserList",
        |c| c.user_list(AuthUserListRequest {}),
        |s| s.user_list(as_tenant).map(|r| r.join(",")),
        |r: AuthUserListResponse| r.users.join(",")
    );
    both!(
        log,
        store,
        tenant,
        as_tenant,
        "tenant RoleAdd",
        |c| c.role_add(AuthRoleAddRequest { name: "b".into() }),
        |s| s.role_add(as_tenant, "b").map(|_| String::new()),
        |_| String::new()
    );

    // The tenant's key requests: allowed or refused alike.
    let kv = KvClient::new(tenant_ch.clone());
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let ranges = [
        ("/a/x", ""),
        ("/a/", "/a0"),
        ("/a/", "/a1"),
        ("/a", "/a0"),
        ("/b/x", ""),
        ("/", "\0"),
        ("/a/", "\0"),
        ("/a/m", "/a/c"),
    ];
    for (key, end) in ranges {
        let mut c = kv.clone();
        let etcd = outcome(
            c.range(RangeRequest {
                key: b(key),
                range_end: b(end),
                ..Default::default()
            })
            .await,
            |_| String::new(),
        );
        let model = store_outcome(
            store.check_range(as_tenant, key.as_bytes(), end.as_bytes(), PermType::Read),
            |_| String::new(),
        );
        log.push((format!("Range {key:?}..{end:?}"), etcd, model));
        let mut c = kv.clone();
        let etcd = outcome(
            c.delete_range(DeleteRangeRequest {
                key: b(key),
                range_end: b(end),
                prev_kv: true,
            })
            .await,
            |_| String::new(),
        );
        let model = store_outcome(
            store.check_delete(as_tenant, key.as_bytes(), end.as_bytes(), true),
            |_| String::new(),
        );
        log.push((format!("DeleteRange {key:?}..{end:?} prev_kv"), etcd, model));
    }
    for key in ["/a/pods/x", "/b/pods/x", "/a0"] {
        let mut c = kv.clone();
        let etcd = outcome(
            c.put(PutRequest {
                key: b(key),
                value: b("v"),
                prev_kv: true,
                ..Default::default()
            })
            .await,
            |_| String::new(),
        );
        let model = store_outcome(store.check_put(as_tenant, key.as_bytes(), true), |_| String::new());
        log.push((format!("Put {key:?}"), etcd, model));
    }
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let kube = |other: &str| TxnRequest {
        compare: vec![Compare {
            key: b("/a/pods/x"),
            target: compare::CompareTarget::Mod as i32,
            target_union: Some(compare::TargetUnion::ModRevision(0)),
            ..Default::default()
        }],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: b("/a/pods/x"),
            value: b("v"),
            ..Default::default()
        }))],
        failure: vec![op(request_op::Request::RequestRange(RangeRequest {
            key: b(other),
            ..Default::default()
        }))],
    };
    for other in ["/a/pods/x", "/b/pods/x"] {
        let mut c = kv.clone();
        let t = kube(other);
        let etcd = outcome(c.txn(t.clone()).await, |_| String::new());
        let model = store_outcome(store.check_txn(as_tenant, &t), |_| String::new());
        log.push((format!("Txn else Range {other:?}"), etcd, model));
    }

    // Kamaji's deletion: the role, the keys, the user.
    both!(
        log,
        store,
        root,
        as_root,
        "RoleDelete a",
        |c| c.role_delete(AuthRoleDeleteRequest { role: "a".into() }),
        |s| s.role_delete(as_root, "a").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserGet after RoleDelete",
        |c| c.user_get(AuthUserGetRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_get(as_root, "tenant-a").map(|r| r.join(",")),
        roles
    );
    let mut c = kv.clone();
    let etcd = outcome(
        c.range(RangeRequest {
            key: b("/a/x"),
            ..Default::default()
        })
        .await,
        |_| String::new(),
    );
    let model = store_outcome(store.check_range(as_tenant, b"/a/x", b"", PermType::Read), |_| {
        String::new()
    });
    log.push(("Range after RoleDelete".into(), etcd, model));
    both!(
        log,
        store,
        root,
        as_root,
        "UserDelete tenant-a",
        |c| c.user_delete(AuthUserDeleteRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_delete(as_root, "tenant-a").map(|_| String::new()),
        |_| String::new()
    );
    both!(
        log,
        store,
        root,
        as_root,
        "UserDelete again",
        |c| c.user_delete(AuthUserDeleteRequest {
            name: "tenant-a".into()
        }),
        |s| s.user_delete(as_root, "tenant-a").map(|_| String::new()),
        |_| String::new()
    );

    let differing: Vec<_> = log.iter().filter(|(_, e, m)| e != m).collect();
    assert!(
        differing.is_empty(),
        "the store differs from etcd (call, etcd, store):\n{}",
        differing
            .iter()
            .map(|(w, e, m)| format!("  {w}: etcd {e:?}, store {m:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Both kinds of answer were seen, so the comparison can fail.
    assert!(log.iter().any(|(_, e, _)| e.starts_with("ok")));
    assert!(log
        .iter()
        .any(|(_, e, _)| e.contains(&format!("{:?}", Code::PermissionDenied))));
    assert!(log.len() > 40, "{} calls compared", log.len());
}
