//! The template's HTTP API sends every route of the router to the `api` function: the routes
//! come from the router's own `/openapi.json` (asked of the `api` binary), the template's routes
//! from its `HttpApi` events, matched the way API Gateway HTTP APIs choose a route.

#[path = "../../../tests/support/lambda_events.rs"]
mod events;
#[path = "../../../tests/support/lambda_runtime.rs"]
mod lambda_runtime;
#[path = "../../../tests/support/moto.rs"]
mod moto;

use std::process::Command;

use lambda_runtime::{http_response as response, invoke};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_api");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");

/// One route of the template: which function, which method (`None`: any) and path.
#[derive(Debug)]
struct Route {
    function: String,
    method: Option<String>,
    /// `None`: the `$default` route.
    path: Option<String>,
}

/// template.yaml as JSON; CloudFormation tags (`!Ref X`) become `{"Ref": "X"}`. PyYAML comes
/// with moto, which these tests need anyway.
fn template() -> Value {
    const TO_JSON: &str = r#"
import json, sys, yaml
class Loader(yaml.SafeLoader):
    pass
def tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}
Loader.add_multi_constructor("!", tagged)
json.dump(yaml.load(open(sys.argv[1]), Loader=Loader), sys.stdout)
"#;
    let output = Command::new("python3")
        .args(["-c", TO_JSON, TEMPLATE])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "reading {TEMPLATE}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The template's HTTP API routes. An `HttpApi` event without Path and Method is `$default`.
fn routes(template: &Value) -> Vec<Route> {
    let mut routes = Vec::new();
    for (name, resource) in template["Resources"].as_object().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let Some(events) = resource["Properties"]["Events"].as_object() else {
            continue;
        };
        for event in events.values().filter(|event| event["Type"] == "HttpApi") {
            let properties = &event["Properties"];
            let method = properties["Method"].as_str().map(str::to_uppercase);
            let path = properties["Path"].as_str().map(str::to_owned);
            let default = method.is_none() && path.is_none();
            routes.push(Route {
                function: name.clone(),
                method: method.filter(|method| method != "ANY"),
                path: if default {
                    None
                } else {
                    Some(path.unwrap_or_else(|| "/".into()))
                },
            });
        }
    }
    routes
}

/// How specifically `route` matches the request (higher wins), or `None` when it does not.
/// API Gateway HTTP APIs prefer literal segments over `{param}`, those over a greedy
/// `{proxy+}`, a method over ANY, and fall back to `$default`.
fn specificity(route: &Route, method: &str, path: &str) -> Option<(u8, usize, bool)> {
    if route.method.as_deref().is_some_and(|m| m != method) {
        return None;
    }
    let method_given = route.method.is_some();
    let Some(pattern) = &route.path else {
        return Some((0, 0, method_given));
    };
    let wanted: Vec<&str> = pattern.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    let mut literal = 0;
    for (index, segment) in wanted.iter().enumerate() {
        if segment.starts_with('{') && segment.ends_with("+}") {
            return (given.len() > index).then_some((1, literal, method_given));
        }
        let actual = given.get(index)?;
        if segment.starts_with('{') && segment.ends_with('}') {
            if actual.is_empty() {
                return None;
            }
        } else if segment == actual {
            literal += 1;
        } else {
            return None;
        }
    }
    (given.len() == wanted.len()).then_some((2, literal, method_given))
}

/// The function the HTTP API gives the request to, and the route's description.
fn routed<'a>(routes: &'a [Route], method: &str, path: &str) -> Option<&'a Route> {
    routes
        .iter()
        .filter_map(|route| specificity(route, method, path).map(|rank| (rank, route)))
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, route)| route)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_router_reaches_the_api_function() {
    let moto = moto::Moto::start();
    let (status, document) = response(
        invoke(
            BIN,
            &moto.env(),
            events::default_route_request("GET", "/openapi.json", None, None),
        )
        .await
        .answer,
    );
    assert_eq!(status, 200, "{document}");
    let mut requests = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        // A sample value for each path parameter, as a client would send.
        let concrete: Vec<String> = path
            .split('/')
            .map(|segment| match segment.starts_with('{') {
                true => "sample-1".to_owned(),
                false => segment.to_owned(),
            })
            .collect();
        for method in operations.as_object().unwrap().keys() {
            requests.push((method.to_uppercase(), concrete.join("/")));
        }
    }
    assert!(
        requests.len() >= 8,
        "the OpenAPI document lists the router's routes: {requests:?}"
    );
    // The original notebook's trailing slash, and paths the router does not know (they must
    // reach it too, for its JSON 404).
    requests.push(("POST".into(), "/task-runner/".into()));
    requests.push(("GET".into(), "/no-such-route".into()));
    requests.push(("PUT".into(), "/task-runner/sample-1/logs/more".into()));

    let routes = routes(&template());
    let mut missed = Vec::new();
    for (method, path) in &requests {
        match routed(&routes, method, path) {
            Some(route) if route.function == "ApiFunction" => {}
            other => missed.push(format!("{method} {path} -> {other:?}")),
        }
    }
    assert!(
        missed.is_empty(),
        "requests the template's HTTP API does not give to ApiFunction (add them to its Events, or keep its $default route): {missed:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_route_delivers_the_trailing_slash_and_unknown_paths_to_the_router() {
    let moto = moto::Moto::start();
    let body = json!({"task_id": "slash-1", "task_file_name": "job.sh",
        "worker_config": {"worker_size": "Small", "git_configs": [{"remote_url": "https://git.example.com/org/repo.git"}]}})
    .to_string();
    let (status, answer) = response(
        invoke(
            BIN,
            &moto.env(),
            events::default_route_request(
                "POST",
                "/task-runner/",
                Some("lambda-test-key"),
                Some(&body),
            ),
        )
        .await
        .answer,
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["task_id"], "slash-1");

    let (status, answer) = response(
        invoke(
            BIN,
            &moto.env(),
            events::default_route_request("GET", "/no-such-route", None, None),
        )
        .await
        .answer,
    );
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["success"], false);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("GET /openapi.json"),
        "{answer}"
    );
}
