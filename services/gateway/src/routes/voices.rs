//! `GET /api/voices`: the voices that can be used now.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "voices": state.registry.voices() }))
}
