//! Grant evaluation: whether a grant lets a caller make a request, whether a grant may be
//! retired by a caller, and whether a grant permits creating another (no wider than itself).
//!
//! Pure functions over the persisted [`GrantRecord`]; the API consults them after the key
//! policy (an explicit Deny in the policy still wins over any grant).

use std::collections::BTreeMap;

use super::Request;
use crate::keystore::key::{GrantConstraints, GrantOperation, GrantRecord};

/// Whether `principal`, as a grant names it (grantee or retiring principal), is the caller:
/// the caller's own ARN, or the caller's account (as `ACCOUNT` or `arn:aws:iam::ACCOUNT:root`,
/// which stands for every principal of the account, as in key policies).
pub fn grant_principal_matches(principal: &str, caller_arn: &str, account: &str) -> bool {
    principal == caller_arn
        || principal == account
        || principal.strip_prefix("arn:aws:iam::").and_then(|rest| rest.strip_suffix(":root"))
            == Some(account)
}

/// Whether `constraints` hold for a request's encryption context (`None`: the operation
/// takes none, so only an absent constraint holds).
pub fn constraints_hold(
    constraints: &GrantConstraints,
    context: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let context = context.unwrap_or(&empty);
    let equals = constraints.encryption_context_equals.as_ref().is_none_or(|want| want == context);
    let subset = constraints
        .encryption_context_subset
        .as_ref()
        .is_none_or(|want| want.iter().all(|(k, v)| context.get(k) == Some(v)));
    equals && subset
}

/// Whether `grant` allows `request`: the grant names the caller as grantee, permits the
/// request's action (without its `kms:` prefix), and, for an operation that takes an
/// encryption context, its constraints hold for the request's context.
pub fn grant_allows(grant: &GrantRecord, request: &Request<'_>) -> bool {
    let Some(operation) =
        request.action.strip_prefix("kms:").and_then(GrantOperation::from_kms_name)
    else {
        return false;
    };
    if !grant.permits(operation)
        || !grant_principal_matches(
            &grant.grantee_principal,
            request.principal_arn,
            request.account,
        )
    {
        return false;
    }
    match &grant.constraints {
        Some(constraints) if operation.takes_encryption_context() => {
            constraints_hold(constraints, request.encryption_context)
        }
        _ => true,
    }
}

/// Whether the caller may retire `grant`: its retiring principal, its grantee when it permits
/// RetireGrant, or the account itself (`account_admin`: in kagi, an administrator or a
/// principal given the account action `kms:RetireGrant`).
pub fn may_retire(
    grant: &GrantRecord,
    caller_arn: &str,
    account: &str,
    account_admin: bool,
) -> bool {
    account_admin
        || grant
            .retiring_principal
            .as_deref()
            .is_some_and(|p| grant_principal_matches(p, caller_arn, account))
        || (grant.permits(GrantOperation::RetireGrant)
            && grant_principal_matches(&grant.grantee_principal, caller_arn, account))
}

/// Whether a grant that lets its grantee call CreateGrant covers a new grant of `operations`
/// and `constraints`: the new grant permits no operation the parent does not, and its
/// encryption context constraints are at least as strict as the parent's.
pub fn grant_covers(
    parent: &GrantRecord,
    operations: &[GrantOperation],
    constraints: Option<&GrantConstraints>,
) -> bool {
    if !operations.iter().all(|op| parent.permits(*op)) {
        return false;
    }
    let Some(parent) = &parent.constraints else { return true };
    let child = constraints.cloned().unwrap_or_default();
    let equals_ok = parent
        .encryption_context_equals
        .as_ref()
        .is_none_or(|want| child.encryption_context_equals.as_ref() == Some(want));
    let contains = |bigger: &BTreeMap<String, String>, smaller: &BTreeMap<String, String>| {
        smaller.iter().all(|(k, v)| bigger.get(k) == Some(v))
    };
    let subset_ok = parent.encryption_context_subset.as_ref().is_none_or(|want| {
        child.encryption_context_equals.as_ref().is_some_and(|e| contains(e, want))
            || child.encryption_context_subset.as_ref().is_some_and(|s| contains(s, want))
    });
    equals_ok && subset_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "111122223333";
    const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
    const BOB: &str = "arn:aws:iam::111122223333:user/bob";

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn grant(grantee: &str, operations: &[GrantOperation]) -> GrantRecord {
        GrantRecord {
            grant_id: "0".repeat(64),
            name: None,
            grantee_principal: grantee.to_owned(),
            retiring_principal: None,
            operations: operations.to_vec(),
            constraints: None,
            created: 0,
            issuing_account: ACCOUNT.to_owned(),
            issuing_principal: BOB.to_owned(),
        }
    }

    fn constrained(
        equals: Option<&[(&str, &str)]>,
        subset: Option<&[(&str, &str)]>,
    ) -> GrantConstraints {
        GrantConstraints {
            encryption_context_equals: equals.map(map),
            encryption_context_subset: subset.map(map),
        }
    }

    fn allows(
        grant: &GrantRecord,
        caller: &str,
        action: &str,
        context: Option<&[(&str, &str)]>,
    ) -> bool {
        let context = context.map(map);
        grant_allows(
            grant,
            &Request {
                principal_arn: caller,
                account: ACCOUNT,
                action,
                resource: "arn:aws:kms:us-east-1:111122223333:key/k",
                encryption_context: context.as_ref(),
            },
        )
    }

    #[test]
    fn grants_allow_their_grantee_their_operations() {
        use GrantOperation as O;
        let g = grant(ALICE, &[O::Encrypt, O::DescribeKey]);
        assert!(allows(&g, ALICE, "kms:Encrypt", Some(&[])));
        assert!(allows(&g, ALICE, "kms:DescribeKey", None));
        assert!(!allows(&g, ALICE, "kms:Decrypt", Some(&[])), "an operation not granted");
        assert!(!allows(&g, BOB, "kms:Encrypt", Some(&[])), "another principal");
        assert!(!allows(&g, ALICE, "kms:PutKeyPolicy", None), "not a grant operation");
        assert!(!allows(&g, ALICE, "Encrypt", None), "actions carry their kms: prefix");
        let account = grant(&format!("arn:aws:iam::{ACCOUNT}:root"), &[O::Encrypt]);
        assert!(allows(&account, BOB, "kms:Encrypt", None), "the account root names everyone");
        assert!(allows(&grant(ACCOUNT, &[O::Encrypt]), BOB, "kms:Encrypt", None));
        let other = grant("arn:aws:iam::444455556666:root", &[O::Encrypt]);
        assert!(!allows(&other, BOB, "kms:Encrypt", None), "another account's root");
    }

    #[test]
    fn encryption_context_constraints() {
        use GrantOperation as O;
        let ops = [O::Encrypt, O::Decrypt, O::DescribeKey];
        let mut equals = grant(ALICE, &ops);
        equals.constraints = Some(constrained(Some(&[("app", "x")]), None));
        let mut subset = grant(ALICE, &ops);
        subset.constraints = Some(constrained(None, Some(&[("app", "x")])));
        let cases: [(Option<Pairs<'_>>, bool, bool); 6] = [
            (Some(&[("app", "x")]), true, true),
            (Some(&[("app", "x"), ("user", "7")]), false, true),
            (Some(&[("app", "y")]), false, false),
            (Some(&[("user", "7")]), false, false),
            (Some(&[]), false, false),
            (None, false, false),
        ];
        for (context, want_equals, want_subset) in cases {
            assert_eq!(allows(&equals, ALICE, "kms:Encrypt", context), want_equals, "{context:?}");
            assert_eq!(allows(&subset, ALICE, "kms:Decrypt", context), want_subset, "{context:?}");
        }
        // The constraints do not apply to DescribeKey.
        assert!(allows(&equals, ALICE, "kms:DescribeKey", None));
        // Both constraints at once must both hold.
        let mut both = grant(ALICE, &ops);
        both.constraints = Some(constrained(Some(&[("a", "1"), ("b", "2")]), Some(&[("a", "1")])));
        assert!(allows(&both, ALICE, "kms:Encrypt", Some(&[("a", "1"), ("b", "2")])));
        assert!(!allows(&both, ALICE, "kms:Encrypt", Some(&[("a", "1")])));
    }

    #[test]
    fn who_may_retire() {
        use GrantOperation as O;
        let carol = "arn:aws:iam::111122223333:user/carol";
        let mut g = grant(ALICE, &[O::Encrypt]);
        g.retiring_principal = Some(carol.to_owned());
        assert!(may_retire(&g, carol, ACCOUNT, false), "the retiring principal");
        assert!(!may_retire(&g, ALICE, ACCOUNT, false), "a grantee without RetireGrant");
        assert!(!may_retire(&g, BOB, ACCOUNT, false), "anyone else");
        assert!(may_retire(&g, BOB, ACCOUNT, true), "the account");
        g.operations.push(O::RetireGrant);
        assert!(may_retire(&g, ALICE, ACCOUNT, false), "a grantee with RetireGrant");
    }

    #[test]
    fn created_grants_are_no_wider_than_their_parent() {
        use GrantOperation as O;
        let mut parent = grant(ALICE, &[O::Encrypt, O::Decrypt, O::CreateGrant]);
        assert!(grant_covers(&parent, &[O::Encrypt], None));
        assert!(grant_covers(&parent, &[O::Encrypt, O::CreateGrant], None));
        assert!(!grant_covers(&parent, &[O::Encrypt, O::Sign], None), "a wider grant");
        parent.constraints = Some(constrained(None, Some(&[("app", "x")])));
        assert!(!grant_covers(&parent, &[O::Encrypt], None), "unconstrained under a constraint");
        let same = constrained(None, Some(&[("app", "x")]));
        let stricter = constrained(None, Some(&[("app", "x"), ("user", "7")]));
        let exact = constrained(Some(&[("app", "x"), ("user", "7")]), None);
        let other = constrained(None, Some(&[("app", "y")]));
        assert!(grant_covers(&parent, &[O::Encrypt], Some(&same)));
        assert!(grant_covers(&parent, &[O::Encrypt], Some(&stricter)));
        assert!(grant_covers(&parent, &[O::Encrypt], Some(&exact)));
        assert!(!grant_covers(&parent, &[O::Encrypt], Some(&other)));
        parent.constraints = Some(constrained(Some(&[("app", "x")]), None));
        assert!(grant_covers(
            &parent,
            &[O::Encrypt],
            Some(&constrained(Some(&[("app", "x")]), None))
        ));
        assert!(
            !grant_covers(&parent, &[O::Encrypt], Some(&same)),
            "a subset is looser than equals"
        );
    }
}
