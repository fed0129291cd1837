//! The user module against a real broker: its requests, its event, and the
//! structured errors for every kind of bad input.

use std::time::Duration;

use contract::user::{CreateUser, GetUser, UserCreated, UserId};
use contract::values::Name;
use testkit::{expect_refusal, spawn_module, TestModule};

const WAIT: Duration = Duration::from_secs(10);

async fn spawn_app() -> TestModule {
    spawn_module(user::register).await
}

#[tokio::test]
async fn create_then_get_and_the_event_carries_the_user() {
    let app = spawn_app().await;
    let bus = app.broker.bus();
    let mut created = bus.watch::<UserCreated>().await.unwrap();

    let user = bus
        .request(&CreateUser {
            name: Name::parse("  John Doe ").unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(user.name.as_str(), "John Doe");

    let event = created.next_within(WAIT).await.unwrap();
    assert_eq!(event.event.user, user);

    let fetched = bus.request(&GetUser { id: user.id }).await.unwrap();
    assert_eq!(fetched, user);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_user_is_a_404() {
    let app = spawn_app().await;
    let id = UserId::new();
    let err = expect_refusal(app.broker.bus().request(&GetUser { id }).await);
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"));
    assert!(err.message.contains(&id.to_string()), "{}", err.message);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason_and_creates_nothing() {
    let app = spawn_app().await;
    let cases = [
        ("user.create", r#"{"name": ""}"#, "name must not be empty"),
        (
            "user.create",
            r#"{"name": "   "}"#,
            "name must not be empty",
        ),
        (
            "user.create",
            r#"{"name": 42}"#,
            "invalid type: integer `42`",
        ),
        ("user.create", r#"{}"#, "missing field `name`"),
        ("user.create", "not json", "expected a JSON object"),
        ("user.create", r#"{"name": "Ada""#, "EOF while parsing"),
        ("user.create", "", "empty payload"),
        (
            "user.create",
            r#"{"name": "Ada\u0000Lovelace"}"#,
            "control characters (found U+0000)",
        ),
        (
            "user.create",
            r#"{"name": "evil\u202Egnp.exe"}"#,
            "control characters (found U+202E)",
        ),
        (
            "user.create",
            r#"{"name": "two\nlines"}"#,
            "control characters (found U+000A)",
        ),
        ("user.get", r#"{"id": "nope"}"#, "UUID"),
        ("user.get", r#"{"id": 7}"#, "invalid type"),
    ];
    let mut created = app.broker.bus().watch::<UserCreated>().await.unwrap();
    for (subject, payload, reason) in cases {
        let err = app.broker.request_raw(subject, payload).await.unwrap_err();
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "bad_request"),
            "{payload}"
        );
        assert!(err.message.contains(reason), "{payload}: {}", err.message);
    }
    let long = "x".repeat(Name::MAX_LEN + 1);
    let err = app
        .broker
        .request_raw("user.create", &format!(r#"{{"name":"{long}"}}"#))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("at most 200 characters"),
        "{}",
        err.message
    );

    // Nothing was created: the first user.created event is the valid one below.
    let user = app
        .broker
        .bus()
        .request(&CreateUser {
            name: Name::parse("Valid").unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(created.next_within(WAIT).await.unwrap().event.user, user);
    let stats = app.module.stats("user.create").unwrap();
    assert_eq!((stats.completed, stats.failed), (12, 11));
    app.shutdown().await;
}
