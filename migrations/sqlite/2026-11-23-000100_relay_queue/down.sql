DROP TABLE relay_queue;
