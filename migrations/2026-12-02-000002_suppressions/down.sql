DROP TABLE soft_bounces;
DROP TABLE suppressions;
