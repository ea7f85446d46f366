use std::collections::BTreeMap;

use super::*;

const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn request<'a>(
    who: &'a str,
    action: &'a str,
    context: Option<&'a BTreeMap<String, String>>,
) -> Request<'a> {
    Request {
        principal_arn: who,
        account: "111122223333",
        action,
        resource: KEY,
        encryption_context: context,
    }
}

const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const BOB: &str = "arn:aws:iam::111122223333:user/bob";

fn context(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn least_privilege() {
    let policy = Policy::parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{ALICE}"}},
            "Action":"kms:Encrypt","Resource":"*"}}]}}"#
    ))
    .unwrap();
    assert_eq!(policy.evaluate(&request(ALICE, "kms:Encrypt", None)), Decision::Allow);
    for action in ["kms:Decrypt", "kms:DescribeKey", "kms:ScheduleKeyDeletion", "kms:EncryptX"] {
        assert_eq!(policy.evaluate(&request(ALICE, action, None)), Decision::ImplicitDeny);
    }
    assert_eq!(policy.evaluate(&request(BOB, "kms:Encrypt", None)), Decision::ImplicitDeny);
}

#[test]
fn deny_wins_and_wildcards_match() {
    let policy = Policy::parse(
        r#"{"Statement":[
            {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
            {"Sid":"NoDeletes","Effect":"Deny","Principal":"*","Action":["kms:Schedule*","kms:Disable?ey"],"Resource":"*"}
        ]}"#,
    )
    .unwrap();
    assert_eq!(policy.evaluate(&request(BOB, "kms:Decrypt", None)), Decision::Allow);
    for action in ["kms:ScheduleKeyDeletion", "kms:DisableKey"] {
        assert_eq!(
            policy.evaluate(&request(BOB, action, None)),
            Decision::ExplicitDeny(Some("NoDeletes".into()))
        );
    }
    // Actions compare case-insensitively, resources case-sensitively.
    assert_eq!(policy.evaluate(&request(BOB, "KMS:decrypt", None)), Decision::Allow);
    assert!(wildcard_match("arn:aws:kms:*:111122223333:key/*", KEY, false));
    assert!(!wildcard_match("arn:aws:kms:*:111122223333:alias/*", KEY, false));
    assert!(wildcard_match("a*b*c", "aXXbYYc", false));
    assert!(!wildcard_match("a*b*c", "aXXbYY", false));
}

#[test]
fn encryption_context_conditions() {
    let policy = Policy::parse(&format!(
        r#"{{"Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"{ALICE}"}},"Action":"kms:Decrypt","Resource":"*",
              "Condition":{{"StringEquals":{{"kms:EncryptionContext:tenant":"t1"}}}}}},
            {{"Effect":"Allow","Principal":{{"AWS":"{ALICE}"}},"Action":"kms:Encrypt","Resource":"*",
              "Condition":{{"ForAllValues:StringLike":{{"kms:EncryptionContextKeys":["tenant","app*"]}},
                           "Null":{{"kms:EncryptionContextKeys":"false"}}}}}},
            {{"Effect":"Allow","Principal":{{"AWS":"{ALICE}"}},"Action":"kms:GenerateDataKey","Resource":"*",
              "Condition":{{"ForAnyValue:StringEquals":{{"kms:EncryptionContextKeys":"purpose"}},
                           "StringEquals":{{"kms:CallerAccount":"111122223333"}}}}}}
        ]}}"#
    ))
    .unwrap();
    let eval = |action, pairs: &[(&str, &str)]| {
        let context = context(pairs);
        policy.evaluate(&request(ALICE, action, Some(&context))) == Decision::Allow
    };
    assert!(eval("kms:Decrypt", &[("tenant", "t1")]));
    assert!(eval("kms:Decrypt", &[("tenant", "t1"), ("other", "x")]));
    assert!(!eval("kms:Decrypt", &[("tenant", "t2")]));
    assert!(!eval("kms:Decrypt", &[]));
    assert!(eval("kms:Encrypt", &[("tenant", "t1"), ("application", "x")]));
    assert!(!eval("kms:Encrypt", &[("tenant", "t1"), ("other", "x")]));
    assert!(!eval("kms:Encrypt", &[]), "Null:false demands a context");
    assert!(eval("kms:GenerateDataKey", &[("purpose", "x"), ("b", "y")]));
    assert!(!eval("kms:GenerateDataKey", &[("b", "y")]));
}

#[test]
fn unsupported_conditions_fail_safe() {
    let policy = Policy::parse(&format!(
        r#"{{"Statement":[
            {{"Sid":"A","Effect":"Allow","Principal":{{"AWS":"{ALICE}"}},"Action":"kms:*","Resource":"*",
              "Condition":{{"IpAddress":{{"aws:SourceIp":"10.0.0.0/8"}}}}}},
            {{"Sid":"B","Effect":"Allow","Principal":{{"AWS":"{BOB}"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"C","Effect":"Deny","Principal":{{"AWS":"{BOB}"}},"Action":"kms:Decrypt","Resource":"*",
              "Condition":{{"StringEquals":{{"kms:ViaService":"s3.us-east-1.amazonaws.com"}}}}}}
        ]}}"#
    ))
    .unwrap();
    assert_eq!(policy.evaluate(&request(ALICE, "kms:Encrypt", None)), Decision::ImplicitDeny);
    assert_eq!(policy.evaluate(&request(BOB, "kms:Encrypt", None)), Decision::Allow);
    assert_eq!(
        policy.evaluate(&request(BOB, "kms:Decrypt", None)),
        Decision::ExplicitDeny(Some("C".into()))
    );
    let notes = policy.unevaluated();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("statement A") && notes[0].contains("never matches"));
    assert!(notes[1].contains("kms:ViaService") && notes[1].contains("always matches"));
}

#[test]
fn malformed_policies_are_refused() {
    for text in [
        "",
        "[]",
        "{}",
        r#"{"Statement":[]}"#,
        r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Resource":"*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Bogus":1}]}"#,
        r#"{"Version":"2099-01-01","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
    ] {
        assert!(Policy::parse(text).is_err(), "{text}");
    }
    assert!(Policy::parse(&"x".repeat(MAX_POLICY_BYTES + 1)).is_err());
}

#[test]
fn the_default_policy_admits_administrators_and_the_creator() {
    let text = default_policy("111122223333", &["admin"], "alice");
    let policy = Policy::parse(&text).unwrap();
    let admin = user_arn("111122223333", "admin");
    assert_eq!(policy.evaluate(&request(&admin, "kms:ScheduleKeyDeletion", None)), Decision::Allow);
    assert_eq!(policy.evaluate(&request(ALICE, "kms:Encrypt", None)), Decision::Allow);
    assert_eq!(policy.evaluate(&request(BOB, "kms:Encrypt", None)), Decision::ImplicitDeny);
}
