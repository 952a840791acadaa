"""The shard stage: `ShardWorker`, the process that holds partitions and persists them, its wire
protocol, its direct search channel, and the fan-out of one search to every worker."""
