//! Grants in the keystore: creation rules, idempotency by name, listing and pagination,
//! retirement and revocation (who may, and by token or id), token checks, persistence, audit.

use super::*;
use crate::audit::Outcome;
use crate::keystore::grants::MAX_GRANTS_PER_KEY;

const ACCOUNT: &str = "111122223333";
const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const BOB: &str = "arn:aws:iam::111122223333:user/bob";
const CAROL: &str = "arn:aws:iam::111122223333:user/carol";

fn new_grant(grantee: &str, operations: &[GrantOperation]) -> NewGrant {
    NewGrant {
        grantee_principal: grantee.to_owned(),
        retiring_principal: None,
        operations: operations.to_vec(),
        constraints: None,
        name: None,
        issuing_principal: BOB.to_owned(),
    }
}

fn subset(pairs: &[(&str, &str)]) -> Option<GrantConstraints> {
    Some(GrantConstraints {
        encryption_context_equals: None,
        encryption_context_subset: Some(context(pairs)),
    })
}

fn by(arn: &str) -> Retirer<'_> {
    Retirer { principal_arn: arn, account_admin: false }
}

async fn grants_of(h: &Harness, key_id: &str) -> Vec<GrantRecord> {
    h.ks.store().key(key_id).await.expect("store").expect("key").grants
}

#[tokio::test]
async fn create_list_and_persist() {
    let h = harness();
    let key = h.symmetric().await;
    let mut request = new_grant(ALICE, &[GrantOperation::Encrypt, GrantOperation::Encrypt]);
    request.retiring_principal = Some(CAROL.to_owned());
    request.constraints = subset(&[("app", "x")]);
    let created = h.ks.create_grant(&ctx(), &key, request).await.expect("create");
    assert_eq!(created.grant_id.len(), 64);
    assert!(created.grant_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(created.key_arn, h.ks.key_arn(&key));
    let page = h.ks.list_grants(&ctx(), &key, None, None, None, None).await.expect("list");
    assert_eq!(page.items.len(), 1);
    assert!(page.next_marker.is_none());
    let grant = &page.items[0].grant;
    assert_eq!(grant.grant_id, created.grant_id);
    assert_eq!(grant.operations, [GrantOperation::Encrypt], "duplicates are dropped");
    assert_eq!(grant.grantee_principal, ALICE);
    assert_eq!(grant.retiring_principal.as_deref(), Some(CAROL));
    assert_eq!(grant.issuing_account, ACCOUNT);
    assert_eq!(grant.issuing_principal, BOB);
    assert_eq!(grant.created, T0);
    assert_eq!(grant.constraints, subset(&[("app", "x")]));
    // The grant survives a restart, and its token is still good.
    drop(h.ks);
    let reopened = open_at(h.dir.path(), &h.clock, &h.audit).expect("reopen");
    let key_record = reopened.store().key(&key).await.expect("store").expect("key");
    assert_eq!(key_record.grants.len(), 1);
    reopened.check_grant_tokens(&[created.grant_token]).await.expect("token");
}

#[tokio::test]
async fn records_without_grants_still_load() {
    let h = harness();
    let key = h.symmetric().await;
    let record = h.ks.store().key(&key).await.expect("store").expect("key");
    let mut json = serde_json::to_value(&record).expect("json");
    json.as_object_mut().expect("object").remove("grants");
    let old: KeyRecord = serde_json::from_value(json).expect("an old record loads");
    assert!(old.grants.is_empty());
}

#[tokio::test]
async fn named_grants_are_idempotent() {
    let h = harness();
    let key = h.symmetric().await;
    let named = |ops: &[GrantOperation]| {
        let mut request = new_grant(ALICE, ops);
        request.name = Some("app/reader".into());
        request
    };
    let ops = [GrantOperation::Decrypt, GrantOperation::Encrypt];
    let first = h.ks.create_grant(&ctx(), &key, named(&ops)).await.expect("first");
    let reversed = [GrantOperation::Encrypt, GrantOperation::Decrypt];
    let again = h.ks.create_grant(&ctx(), &key, named(&reversed)).await.expect("again");
    assert_eq!(first.grant_id, again.grant_id, "same name and parameters: same grant");
    assert_ne!(first.grant_token, again.grant_token, "every call gets its own token");
    h.ks.check_grant_tokens(&[first.grant_token, again.grant_token]).await.expect("both tokens");
    let revision = h.ks.store().key(&key).await.expect("store").expect("key").revision;
    let _ = h.ks.create_grant(&ctx(), &key, named(&ops)).await.expect("third");
    let after = h.ks.store().key(&key).await.expect("store").expect("key").revision;
    assert_eq!(revision, after, "a retry writes nothing");
    // Other parameters under the same name, or no name at all, make new grants.
    let wider = h.ks.create_grant(&ctx(), &key, named(&[GrantOperation::Encrypt])).await;
    assert_ne!(wider.expect("other ops").grant_id, first.grant_id);
    let a = h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &ops)).await.expect("unnamed");
    let b = h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &ops)).await.expect("unnamed");
    assert_ne!(a.grant_id, b.grant_id);
    assert_eq!(grants_of(&h, &key).await.len(), 4);
    // The same name on another key is another grant (LocalStack #7910).
    let other = h.symmetric().await;
    let there = h.ks.create_grant(&ctx(), &other, named(&ops)).await.expect("other key");
    assert_ne!(there.grant_id, first.grant_id);
    assert_eq!(there.key_arn, h.ks.key_arn(&other));
}

#[tokio::test]
async fn creation_rules() {
    use GrantOperation as O;
    let h = harness();
    let symmetric = h.symmetric().await;
    let signing = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    let hmac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    let create = |key: &str, request: NewGrant| {
        let ks = Arc::clone(&h.ks);
        let key = key.to_owned();
        async move { ks.create_grant(&ctx(), &key, request).await }
    };
    // Operations must fit the key.
    assert_err(create(&symmetric, new_grant(ALICE, &[O::Sign])).await, ErrorKind::Validation);
    assert_err(create(&signing, new_grant(ALICE, &[O::Encrypt])).await, ErrorKind::Validation);
    assert_err(create(&hmac, new_grant(ALICE, &[O::Decrypt])).await, ErrorKind::Validation);
    create(&signing, new_grant(ALICE, &[O::Sign, O::Verify, O::GetPublicKey, O::DescribeKey]))
        .await
        .expect("signing grant");
    create(&hmac, new_grant(ALICE, &[O::GenerateMac, O::RetireGrant])).await.expect("mac grant");
    // Encryption context constraints: only symmetric keys and context-taking operations.
    let mut constrained = new_grant(ALICE, &[O::Sign]);
    constrained.constraints = subset(&[("a", "1")]);
    assert_err(create(&signing, constrained).await, ErrorKind::Validation);
    let mut constrained = new_grant(ALICE, &[O::Encrypt, O::DescribeKey, O::RetireGrant]);
    constrained.constraints = subset(&[("a", "1")]);
    create(&symmetric, constrained).await.expect("constrained grant");
    let too_many: Vec<(String, String)> =
        (0..9).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let mut constrained = new_grant(ALICE, &[O::Encrypt]);
    constrained.constraints = Some(GrantConstraints {
        encryption_context_equals: Some(too_many.into_iter().collect()),
        encryption_context_subset: None,
    });
    assert_err(create(&symmetric, constrained).await, ErrorKind::Validation);
    // Principals, names and operations are checked.
    assert_err(create(&symmetric, new_grant("alice", &[O::Encrypt])).await, ErrorKind::Validation);
    assert_err(create(&symmetric, new_grant(ALICE, &[])).await, ErrorKind::Validation);
    let mut badly_named = new_grant(ALICE, &[O::Encrypt]);
    badly_named.name = Some("no spaces".into());
    assert_err(create(&symmetric, badly_named).await, ErrorKind::Validation);
    create(&symmetric, new_grant(ACCOUNT, &[O::Encrypt])).await.expect("an account grantee");
    // Unknown keys, and key states.
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_err(create(unknown, new_grant(ALICE, &[O::Encrypt])).await, ErrorKind::NotFound);
    h.ks.disable_key(&ctx(), &symmetric).await.expect("disable");
    create(&symmetric, new_grant(ALICE, &[O::Encrypt])).await.expect("a disabled key grants");
    let external = h.external().await;
    create(&external, new_grant(ALICE, &[O::Encrypt])).await.expect("pending import grants");
    h.ks.schedule_key_deletion(&ctx(), &symmetric, Some(7)).await.expect("schedule");
    assert_err(create(&symmetric, new_grant(ALICE, &[O::Encrypt])).await, ErrorKind::InvalidState);
}

#[tokio::test]
async fn grants_per_key_are_capped() {
    let h = harness();
    let key = h.symmetric().await;
    let template =
        h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Encrypt]))
            .await
            .expect("create");
    // Fill the key up in one change rather than 500 calls.
    let test_ctx = ctx();
    let trail = h.ks.trail(&test_ctx, "test");
    h.ks.update(&trail, &key, false, OperationClass::Manage, |record, _| {
        let grant = record.grants[0].clone();
        while record.grants.len() < MAX_GRANTS_PER_KEY {
            let mut more = grant.clone();
            more.grant_id = format!("{:064x}", record.grants.len());
            record.grants.push(more);
        }
        Ok(Vec::new())
    })
    .await
    .expect("fill");
    assert_err(
        h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Decrypt])).await,
        ErrorKind::LimitExceeded,
    );
    h.ks.revoke_grant(&ctx(), &key, &template.grant_id).await.expect("revoke");
    h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Decrypt]))
        .await
        .expect("room again");
}

#[tokio::test]
async fn list_grants_filters_and_pages() {
    let h = harness();
    let key = h.symmetric().await;
    let mut ids = Vec::new();
    for (i, grantee) in [ALICE, BOB, ALICE].into_iter().enumerate() {
        h.clock.advance(i as i64 + 1);
        let created =
            h.ks.create_grant(&ctx(), &key, new_grant(grantee, &[GrantOperation::Encrypt]))
                .await
                .expect("create");
        ids.push(created.grant_id);
    }
    // One at a time, oldest first.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page =
            h.ks.list_grants(&ctx(), &key, None, None, Some(1), marker.as_deref())
                .await
                .expect("page");
        assert_eq!(page.items.len(), 1);
        seen.push(page.items[0].grant.grant_id.clone());
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let alice = h.ks.list_grants(&ctx(), &key, None, Some(ALICE), None, None).await.expect("alice");
    assert_eq!(alice.items.len(), 2);
    let one = h.ks.list_grants(&ctx(), &key, Some(&ids[1]), None, None, None).await.expect("id");
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.items[0].grant.grantee_principal, BOB);
    let absent = "ab".repeat(32);
    let none = h.ks.list_grants(&ctx(), &key, Some(&absent), None, None, None).await;
    assert!(none.expect("well-formed id").items.is_empty());
    assert_err(
        h.ks.list_grants(&ctx(), &key, Some("nope"), None, None, None).await,
        ErrorKind::InvalidGrantId,
    );
    assert_err(
        h.ks.list_grants(&ctx(), &key, None, None, Some(1), Some("%%")).await,
        ErrorKind::InvalidMarker,
    );
    assert_err(
        h.ks.list_grants(&ctx(), &key, None, None, Some(101), None).await,
        ErrorKind::Validation,
    );
}

#[tokio::test]
async fn list_retirable_grants_across_keys() {
    let h = harness();
    let (k1, k2) = (h.symmetric().await, h.symmetric().await);
    for key in [&k1, &k2, &k1] {
        let mut request = new_grant(ALICE, &[GrantOperation::Encrypt]);
        request.retiring_principal = Some(CAROL.to_owned());
        h.ks.create_grant(&ctx(), key, request).await.expect("create");
    }
    h.ks.create_grant(&ctx(), &k2, new_grant(ALICE, &[GrantOperation::Decrypt]))
        .await
        .expect("not retirable by carol");
    let all = h.ks.list_retirable_grants(&ctx(), CAROL, None, None).await.expect("list");
    assert_eq!(all.items.len(), 3);
    let first = h.ks.list_retirable_grants(&ctx(), CAROL, Some(2), None).await.expect("page 1");
    assert_eq!(first.items.len(), 2);
    let marker = first.next_marker.expect("more");
    let rest =
        h.ks.list_retirable_grants(&ctx(), CAROL, Some(2), Some(&marker)).await.expect("page 2");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next_marker.is_none());
    let none = h.ks.list_retirable_grants(&ctx(), BOB, None, None).await.expect("bob");
    assert!(none.items.is_empty());
}

#[tokio::test]
async fn retire_and_revoke() {
    use GrantOperation as O;
    let h = harness();
    let key = h.symmetric().await;
    let create = |request: NewGrant| {
        let ks = Arc::clone(&h.ks);
        let key = key.clone();
        async move { ks.create_grant(&ctx(), &key, request).await.expect("create") }
    };
    let mut request = new_grant(ALICE, &[O::Encrypt]);
    request.retiring_principal = Some(CAROL.to_owned());
    let g = create(request).await;
    let id = GrantRef::Id { key_ref: &key, grant_id: &g.grant_id };
    // Neither the grantee (without RetireGrant) nor a stranger may retire it.
    assert_err(h.ks.retire_grant(&ctx(), id, by(ALICE), false).await, ErrorKind::AccessDenied);
    assert_err(h.ks.retire_grant(&ctx(), id, by(BOB), false).await, ErrorKind::AccessDenied);
    // A dry run checks and changes nothing.
    h.ks.retire_grant(&ctx(), id, by(CAROL), true).await.expect("dry run");
    assert_eq!(grants_of(&h, &key).await.len(), 1);
    // The retiring principal may, by id; then the grant and its token are gone.
    let arn = h.ks.retire_grant(&ctx(), id, by(CAROL), false).await.expect("retire");
    assert_eq!(arn, h.ks.key_arn(&key));
    assert!(grants_of(&h, &key).await.is_empty());
    assert_err(h.ks.retire_grant(&ctx(), id, by(CAROL), false).await, ErrorKind::InvalidGrantId);
    assert_err(
        h.ks.check_grant_tokens(std::slice::from_ref(&g.grant_token)).await,
        ErrorKind::InvalidGrantToken,
    );
    // A grantee whose grant permits RetireGrant may retire it, by token.
    let g = create(new_grant(ALICE, &[O::Encrypt, O::RetireGrant])).await;
    let token = GrantRef::Token(&g.grant_token);
    h.ks.retire_grant(&ctx(), token, by(ALICE), false).await.expect("grantee retires");
    assert_err(
        h.ks.retire_grant(&ctx(), token, by(ALICE), false).await,
        ErrorKind::InvalidGrantToken,
    );
    // The account may retire any grant.
    let g = create(new_grant(ALICE, &[O::Encrypt])).await;
    let admin = Retirer { principal_arn: BOB, account_admin: true };
    h.ks.retire_grant(&ctx(), GrantRef::Token(&g.grant_token), admin, false)
        .await
        .expect("account retires");
    // Bad ids and tokens.
    for bad in ["", "x", "AAAA", &"A".repeat(87)] {
        assert_err(
            h.ks.retire_grant(&ctx(), GrantRef::Token(bad), admin, false).await,
            ErrorKind::InvalidGrantToken,
        );
        assert_err(h.ks.check_grant_tokens(&[bad.to_owned()]).await, ErrorKind::InvalidGrantToken);
    }
    let bad_id = GrantRef::Id { key_ref: &key, grant_id: "not-a-grant" };
    assert_err(h.ks.retire_grant(&ctx(), bad_id, admin, false).await, ErrorKind::InvalidGrantId);
    // Revocation removes any grant; unknown ids and keys are refused.
    let g = create(new_grant(ALICE, &[O::Encrypt])).await;
    h.ks.revoke_grant(&ctx(), &key, &g.grant_id).await.expect("revoke");
    assert!(grants_of(&h, &key).await.is_empty());
    assert_err(h.ks.revoke_grant(&ctx(), &key, &g.grant_id).await, ErrorKind::InvalidGrantId);
    assert_err(h.ks.revoke_grant(&ctx(), &key, "zz").await, ErrorKind::InvalidGrantId);
    assert_err(
        h.ks.revoke_grant(&ctx(), "00000000-0000-4000-8000-000000000000", &g.grant_id).await,
        ErrorKind::NotFound,
    );
    // Grants can be revoked and retired while the key is pending deletion.
    let g = create(new_grant(ALICE, &[O::Encrypt])).await;
    let r = create(new_grant(ALICE, &[O::Encrypt, O::RetireGrant])).await;
    h.ks.schedule_key_deletion(&ctx(), &key, Some(7)).await.expect("schedule");
    h.ks.revoke_grant(&ctx(), &key, &g.grant_id).await.expect("revoke pending deletion");
    h.ks.retire_grant(&ctx(), GrantRef::Token(&r.grant_token), by(ALICE), false)
        .await
        .expect("retire pending deletion");
}

#[tokio::test]
async fn grant_changes_are_audited() {
    let h = harness();
    let key = h.symmetric().await;
    let g =
        h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Encrypt]))
            .await
            .expect("create");
    let _ = h.ks.retire_grant(&ctx(), GrantRef::Token(&g.grant_token), by(BOB), false).await;
    h.ks.revoke_grant(&ctx(), &key, &g.grant_id).await.expect("revoke");
    let arn = h.ks.key_arn(&key);
    let events = h.audit.events();
    let find = |operation: &str| {
        events.iter().find(|e| e.operation == operation).unwrap_or_else(|| panic!("{operation}"))
    };
    assert_eq!(find("CreateGrant").outcome, Outcome::Success);
    assert_eq!(find("CreateGrant").key_arn.as_deref(), Some(arn.as_str()));
    assert_eq!(find("RetireGrant").outcome, Outcome::Failure);
    assert_eq!(find("RetireGrant").error_code, Some("AccessDeniedException"));
    assert_eq!(find("RevokeGrant").outcome, Outcome::Success);
    // A failed audit write fails the change (fail closed).
    h.audit.fail.store(true, Ordering::SeqCst);
    assert_err(
        h.ks.create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Encrypt])).await,
        ErrorKind::Internal,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grant_changes_are_not_lost() {
    let h = harness();
    let key = h.symmetric().await;
    let keep =
        h.ks.create_grant(&ctx(), &key, new_grant(BOB, &[GrantOperation::Decrypt]))
            .await
            .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (ks, key) = (Arc::clone(&h.ks), key.clone());
        tasks.push(tokio::spawn(async move {
            let created = ks
                .create_grant(&ctx(), &key, new_grant(ALICE, &[GrantOperation::Encrypt]))
                .await
                .expect("create");
            // Interleave removals with the creations.
            ks.revoke_grant(&ctx(), &key, &created.grant_id).await.expect("revoke");
            ks.create_grant(&ctx(), &key, new_grant(CAROL, &[GrantOperation::Encrypt]))
                .await
                .expect("create again")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let grants = grants_of(&h, &key).await;
    assert_eq!(grants.len(), 17, "every creation and revocation landed once");
    assert!(grants.iter().any(|g| g.grant_id == keep.grant_id));
    assert!(grants.iter().all(|g| g.grantee_principal != ALICE));
}
