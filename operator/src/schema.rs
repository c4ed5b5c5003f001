// The diesel view of migrations/. Written to match `diesel print-schema` output for the tables
// the operator queries through the DSL; the rest is reached with SQL in the modules that need it.

diesel::table! {
    requests (id) {
        id -> Uuid,
        tenant -> Text,
        request_key -> Text,
        key_source -> Text,
        content_hash -> Bytea,
        priority -> Text,
        from_address -> Jsonb,
        reply_to -> Nullable<Jsonb>,
        subject -> Text,
        text_body -> Nullable<Text>,
        html_body -> Nullable<Text>,
        headers -> Jsonb,
        tags -> Array<Text>,
        metadata -> Jsonb,
        attachments -> Jsonb,
        send_at -> Nullable<Timestamptz>,
        publisher -> Nullable<Text>,
        created_at -> Timestamptz,
        bodies_dropped_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    emails (id) {
        id -> Uuid,
        request_id -> Uuid,
        tenant -> Text,
        recipient -> Jsonb,
        recipient_canonical -> Text,
        status -> Text,
        status_precedence -> Int2,
        last_seq -> Int4,
        provider -> Nullable<Text>,
        provider_message_id -> Nullable<Text>,
        open_count -> Int4,
        click_count -> Int4,
        first_opened_at -> Nullable<Timestamptz>,
        first_clicked_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    events (id) {
        id -> Int8,
        event_id -> Uuid,
        email_id -> Uuid,
        seq -> Int4,
        event_type -> Text,
        lifecycle_rank -> Int2,
        occurred_at -> Timestamptz,
        recorded_at -> Timestamptz,
        source -> Text,
        provider -> Nullable<Text>,
        provider_event_id -> Nullable<Text>,
        provider_message_id -> Nullable<Text>,
        details -> Jsonb,
        trace_id -> Nullable<Text>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        job_id -> Uuid,
        email_id -> Uuid,
        tenant -> Text,
        queue -> Text,
        attempt -> Int4,
        traceparent -> Nullable<Text>,
        available_at -> Timestamptz,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        settled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> Uuid,
        source_queue -> Text,
        reason -> Text,
        detail -> Text,
        tenant -> Nullable<Text>,
        request_key -> Nullable<Text>,
        email_id -> Nullable<Uuid>,
        set_aside_by -> Text,
        body -> Bytea,
        headers -> Jsonb,
        attempts -> Int4,
        first_seen_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        replayed_at -> Nullable<Timestamptz>,
        replay_count -> Int4,
        replayed_by -> Nullable<Text>,
        discarded_at -> Nullable<Timestamptz>,
        discard_reason -> Nullable<Text>,
        discarded_by -> Nullable<Text>,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        key_id -> Uuid,
        csrf_token -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::joinable!(emails -> requests (request_id));
diesel::joinable!(sessions -> api_keys (key_id));
diesel::joinable!(events -> emails (email_id));
diesel::joinable!(outbox -> emails (email_id));

diesel::allow_tables_to_appear_in_same_query!(
    requests,
    emails,
    events,
    outbox,
    dead_letters,
    api_keys,
    sessions
);

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        name -> Text,
        key_prefix -> Text,
        key_hash -> Bytea,
        tenant -> Nullable<Text>,
        role -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    suppressions (tenant, address) {
        tenant -> Text,
        address -> Text,
        reason -> Text,
        source_event_id -> Nullable<Uuid>,
        email_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        soft_bounces -> Int4,
    }
}
