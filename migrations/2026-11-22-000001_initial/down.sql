DROP TABLE dead_letters;
DROP TABLE api_keys;
DROP TABLE outbox;
DROP TABLE events;
DROP TABLE emails;
DROP TABLE requests;
