//! The OpenAPI document of the REST API, served at `/api/v1/openapi.json`.

/// The OpenAPI 3.0 document, as JSON text.
pub fn document() -> String {
    let op = |summary: &str, body: Option<&str>, answer: &str| {
        let mut o = serde_json::json!({
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{answer}")}}}},
                "4XX": {"description": "Bad request, unauthorised or not found", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            }
        });
        if let Some(body) = body {
            o["requestBody"] = serde_json::json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        o
    };
    let string = serde_json::json!({"type": "string"});
    let int = serde_json::json!({"type": "integer", "minimum": 0});
    let mut doc = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Tidepool", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/jobs": {
                "get": op("List jobs in memory (?active=true: unfinished only); ?history=true&after=ID&since_ms=T&limit=N pages by id through jobs that left memory, the next page's `after` in the x-next-after header", None, "JobList"),
                "post": op("Submit a job (acknowledged once journaled)", Some("SubmitRequest"), "SubmitResponse"),
            },
            "/jobs/test": {"post": op("Check a job as a submission would and say where and when it would start, submitting nothing (sbatch --test-only)", Some("SubmitRequest"), "TrialAnswer")},
            "/jobs/{id}": {"get": op("Show a job; ?tasks=true lists every task", None, "JobView")},
            "/jobs/{id}/cancel": {"post": op("Cancel a job or one task; with a signal, send it to the running tasks instead (scancel --signal)", Some("CancelRequest"), "CancelResponse")},
            "/jobs/{id}/tasks/{index}/log": {"get": {
                "summary": "A task's output, read by the agent of its node from the file the task wrote, streamed",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
                    {"name": "offset", "in": "query", "description": "First byte", "schema": int},
                    {"name": "limit", "in": "query", "description": "Most bytes", "schema": int},
                    {"name": "tail", "in": "query", "description": "Start at the last this many lines", "schema": int},
                ],
                "responses": {
                    "200": {"description": "The bytes; x-log-start, x-log-size and x-task-ended say where they start, the file's size and whether the task has ended", "content": {"text/plain": {}}},
                    "4XX": {"description": "Bad request, unauthorised, not found, or no output recorded", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
                    "503": {"description": "The node that holds the log is not connected", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                }}},
            "/nodes": {"get": op("List nodes", None, "NodeList")},
            "/nodes/{name}/drain": {"post": op("Drain a node: it finishes what runs and takes nothing new (admin)", None, "DrainAnswer")},
            "/nodes/{name}/resume": {"post": op("Give a drained node, or one failed GPU of it ({\"gpu\": N}), work again (admin)", None, "DrainAnswer")},
            "/projects": {
                "get": op("List projects with their limits and identities (admin)", None, "ProjectList"),
                "post": op("Create a project with an optional quota (admin)", Some("ProjectRequest"), "ProjectCreated"),
            },
            "/tokens": {
                "get": op("List project and join tokens, never the tokens themselves (admin)", None, "TokenList"),
                "post": op("Create a project token or an agents' join token; the token is shown once (admin)", Some("TokenRequest"), "TokenCreated"),
            },
            "/tokens/{id}/revoke": {"post": op("Revoke a token: refused from now on; an agent that joined with it stops (admin)", None, "TokenRevoked")},
            "/registries": {
                "get": op("List registry logins, never their passwords: a project token its own, the admin every project's (?project=)", None, "RegistryLoginList"),
                "post": op("Save a project's login to a registry; its nodes pull that project's images from it with it", Some("RegistryLoginRequest"), "RegistryLoginView"),
            },
            "/registries/logout": {"post": op("Forget a project's login to a registry", Some("RegistryLogoutRequest"), "RegistryLoggedOut")},
            "/jobs/{id}/steps": {
                "get": op("A node's ranks of the steps of a multi-node batch allocation (?node=K&after=S; waits up to 20 s); the job's step key (TIDEPOOL_STEP_KEY) only", None, "StepsForNode"),
                "post": op("Start a step (srun) across the allocation's nodes; the job's step key only", Some("StepLaunch"), "StepPosted"),
            },
            "/jobs/{id}/steps/{step}": {
                "get": op("What a step's ranks on other nodes printed from line ?after=N on, their exits and the nodes done (waits up to ?wait_ms=, at most 5000, for news)", None, "StepProgress"),
                "post": op("A node's report of a step: lines its ranks printed, ranks that ended, done", Some("StepReport"), "Empty"),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ErrorBody": {"type": "object", "required": ["error"], "properties": {"error": string, "field": string}},
                "SubmitRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "name": string, "command": {"type": "array", "items": string}, "script": string,
                    "array": string, "cpus": int, "mem": string, "gpus": int, "project": string,
                    "tier": {"type": "string", "enum": ["realtime", "interruptible", "batch", "offline", "filler", "preemptible"]},
                    "time_limit": string, "after": {"type": "array", "items": int}, "output": string,
                    "error": string, "workdir": string, "env": {"type": "object", "additionalProperties": string},
                    "pool": string, "image": string, "container_mounts": {"type": "array", "items": string},
                    "container_workdir": string, "shm_size": string, "network": {"type": "string", "enum": ["host", "none"]},
                    "container_env": {"type": "array", "items": string}, "open_mode": {"type": "string", "enum": ["append", "truncate"]},
                    "dependency": string, "kill_on_invalid_dep": {"type": "boolean"}, "ntasks": int, "signal": string}},
                "SubmitResponse": {"type": "object", "required": ["job_id"], "properties": {"job_id": int}},
                "CancelRequest": {"type": "object", "properties": {"index": int, "signal": string, "scope": {"type": "string", "enum": ["steps", "batch", "full"]}}},
                "CancelResponse": {"type": "object", "properties": {"n_cancelled": int, "n_signalled": int, "already_ended": {"type": "boolean"}}},
                "JobView": {"type": "object", "properties": {"id": int, "name": string, "state": string, "n_tasks": int}},
                "JobList": {"type": "array", "items": {"$ref": "#/components/schemas/JobView"}},
                "NodeView": {"type": "object", "properties": {"name": string, "pool": string, "state": string,
                    "identities": {"type": "object", "properties": {"project_uids": {"type": "boolean"}, "operator_uid": {"type": ["integer", "null"]}}}}},
                "NodeList": {"type": "array", "items": {"$ref": "#/components/schemas/NodeView"}},
                "ProjectList": {"type": "array", "items": {"$ref": "#/components/schemas/ProjectRequest"}},
                "DrainAnswer": {"type": "object", "properties": {"node": string, "draining": {"type": "boolean"}}},
                "ProjectRequest": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": string, "quota": int, "borrow": int, "share": int, "uid": int, "gid": int, "groups": {"type": "array", "items": int}}},
                "ProjectCreated": {"type": "object", "properties": {"name": string}},
                "TokenRequest": {"type": "object", "additionalProperties": false, "properties": {"project": string, "join": {"type": "boolean"}}},
                "TokenCreated": {"type": "object", "required": ["id", "token"], "properties": {"id": string, "token": string, "project": string}},
                "TokenView": {"type": "object", "properties": {"id": string, "kind": {"type": "string", "enum": ["project", "join"]}, "project": string, "revoked": {"type": "boolean"}}},
                "TokenList": {"type": "array", "items": {"$ref": "#/components/schemas/TokenView"}},
                "RegistryLoginRequest": {"type": "object", "required": ["host", "username", "password"], "additionalProperties": false, "properties": {"host": string, "username": string, "password": string, "project": string}},
                "RegistryLogoutRequest": {"type": "object", "required": ["host"], "additionalProperties": false, "properties": {"host": string, "project": string}},
                "RegistryLoginView": {"type": "object", "properties": {"project": string, "host": string, "username": string}},
                "RegistryLoginList": {"type": "array", "items": {"$ref": "#/components/schemas/RegistryLoginView"}},
                "RegistryLoggedOut": {"type": "object", "properties": {"host": string, "project": string}},
                "TokenRevoked": {"type": "object", "properties": {"id": string, "revoked": {"type": "boolean"}}},
            }
        }
    });
    // Job steps' shapes, apart so that one literal stays within the macro's recursion limit.
    let step_schemas = serde_json::json!({
                "NodeRanks": {"type": "object", "required": ["node", "first", "count"], "additionalProperties": false, "properties": {"node": int, "first": int, "count": int}},
                "StepLaunch": {"type": "object", "required": ["step_id", "command", "ntasks", "ranks"], "additionalProperties": false, "properties": {
                    "step_id": int, "ntasks": int, "command": {"type": "array", "items": string}, "env": {"type": "object", "additionalProperties": string},
                    "ranks": {"type": "array", "items": {"$ref": "#/components/schemas/NodeRanks"}}, "nodelist": {"type": "array", "items": string},
                    "cpus_per_task": int, "output": string, "error": string, "chdir": string}},
                "StepPosted": {"type": "object", "properties": {"step_id": int}},
                "StepsForNode": {"type": "object", "properties": {"steps": {"type": "array", "items": {"$ref": "#/components/schemas/StepLaunch"}}, "ended": {"type": "boolean"}}},
                "StepLine": {"type": "object", "required": ["rank", "text"], "additionalProperties": false, "properties": {"rank": int, "stderr": {"type": "boolean"}, "text": string}},
                "RankExit": {"type": "object", "required": ["rank", "code"], "additionalProperties": false, "properties": {"rank": int, "code": {"type": "integer"}, "signal": {"type": "integer"}}},
                "StepReport": {"type": "object", "required": ["node"], "additionalProperties": false, "properties": {
                    "node": int, "lines": {"type": "array", "items": {"$ref": "#/components/schemas/StepLine"}},
                    "exits": {"type": "array", "items": {"$ref": "#/components/schemas/RankExit"}}, "done": {"type": "boolean"}}},
                "StepProgress": {"type": "object", "properties": {"lines": {"type": "array", "items": {"$ref": "#/components/schemas/StepLine"}}, "next": int,
                    "exits": {"type": "array", "items": {"$ref": "#/components/schemas/RankExit"}}, "done_nodes": {"type": "array", "items": int}, "dropped": int}},
                "Empty": {"type": "object"},
                "TrialAnswer": {"type": "object", "properties": {"job_id": int, "start_ms": {"type": ["integer", "null"]}, "nodes": {"type": "array", "items": string},
                    "cpus": int, "pool": {"type": ["string", "null"]}, "pending_code": {"type": ["string", "null"]}, "pending_reason": {"type": ["string", "null"]}}},
    });
    if let (Some(all), Some(steps)) = (doc["components"]["schemas"].as_object_mut(), step_schemas.as_object()) {
        all.extend(steps.clone());
    }
    let more_fields = serde_json::json!({
        "nodes": int, "tasks_per_node": int, "requeue": {"type": "boolean"},
        "secret_env": {"type": "object", "additionalProperties": string}, "constraint": {"type": "array", "items": string},
        "resources": {"type": "object", "additionalProperties": int},
    });
    if let (Some(fields), Some(more)) = (doc["components"]["schemas"]["SubmitRequest"]["properties"].as_object_mut(), more_fields.as_object()) {
        fields.extend(more.clone());
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        for path in ["/jobs", "/jobs/{id}", "/jobs/{id}/cancel", "/jobs/{id}/tasks/{index}/log", "/nodes", "/nodes/{name}/drain", "/projects", "/tokens", "/tokens/{id}/revoke", "/registries", "/registries/logout", "/jobs/{id}/steps", "/jobs/{id}/steps/{step}", "/jobs/test"] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }
}
