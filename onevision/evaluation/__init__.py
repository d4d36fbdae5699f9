"""What every stage measures with: ranking metrics, latency/cost timing, the test-set harness, photo sheets."""
