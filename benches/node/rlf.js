// rate-limiter-flexible's RateLimiterRedis (over one ioredis connection),
// driven like benches/redis.rs drives RedisStore: C concurrent loops share
// N consume() calls on one key; prints {"rps":…,"p50_ms":…,"p99_ms":…}.
//
//   node rlf.js PORT CONCURRENCY REQUESTS
'use strict';
const Redis = require('ioredis');
const { RateLimiterRedis } = require('rate-limiter-flexible');

async function main() {
  const [port, concurrency, requests] = process.argv.slice(2).map(Number);
  const client = new Redis({ host: '127.0.0.1', port, enableOfflineQueue: true, lazyConnect: true });
  await client.connect();
  const limiter = new RateLimiterRedis({
    storeClient: client,
    keyPrefix: 'rlf',
    points: 1e12, // never reached, like the bench's other clients
    duration: 60,
  });
  // Warm up (script loaded, connection hot).
  for (let i = 0; i < 200; i++) await limiter.consume('bench', 1);

  const latencies = new Float64Array(requests);
  let next = 0;
  async function worker(calls) {
    for (let i = 0; i < calls; i++) {
      const t = process.hrtime.bigint();
      await limiter.consume('bench', 1);
      latencies[next++] = Number(process.hrtime.bigint() - t) / 1e6;
    }
  }
  const start = process.hrtime.bigint();
  const workers = [];
  for (let i = 0; i < concurrency; i++) {
    const calls = Math.floor(requests / concurrency) + (i < requests % concurrency ? 1 : 0);
    workers.push(worker(calls));
  }
  await Promise.all(workers);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const sorted = Array.from(latencies).sort((a, b) => a - b);
  const pct = (p) => sorted[Math.min(sorted.length - 1, Math.round((p / 100) * (sorted.length - 1)))];
  process.stdout.write(JSON.stringify({ rps: requests / seconds, p50_ms: pct(50), p99_ms: pct(99) }) + '\n');
  client.disconnect();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
