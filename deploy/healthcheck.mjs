#!/usr/bin/env node
// Container healthcheck for the Node services (the image has no curl):
//   node deploy/healthcheck.mjs https://127.0.0.1:8443/readyz   HTTP(S) answers 200
//   node deploy/healthcheck.mjs tcp://127.0.0.1:8444            the port accepts connections
// HTTPS certificates are SPIFFE X.509-SVIDs with no hostname to check and no CA in this process:
// the check is about liveness, so the certificate is not verified. Exit 0 healthy, 1 not.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';

const target = process.argv[2];
if (!target) {
  console.error('usage: healthcheck.mjs <http(s)://host:port/path | tcp://host:port>');
  process.exit(2);
}
const url = new URL(target);
const fail = (msg) => {
  console.error(`unhealthy: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 4000).unref();

if (url.protocol === 'tcp:') {
  const socket = connect({ host: url.hostname, port: Number(url.port) }, () => {
    socket.end();
    process.exit(0);
  });
  socket.on('error', (e) => fail(e.message));
} else {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const req = request(url, { method: 'GET', rejectUnauthorized: false }, (res) => {
    res.resume();
    if (res.statusCode === 200) process.exit(0);
    fail(`HTTP ${res.statusCode}`);
  });
  req.on('error', (e) => fail(e.message));
  req.end();
}
