// End-to-end tests of `firkin serve` driven by the official JS `e2b` SDK (exactly 2.51.0, see
// package.json), through recipe A of E2B-CONTRACT.md: E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY point the SDK at one daemon on a loopback port (daemon.mjs starts it).
//
// Every sandbox carries metadata {test: <run id>, case: <test name>}; each test kills its
// sandboxes in a finally block and then checks that none with its metadata is left, and the
// run ends by checking that nothing with the run id is listed, that the daemon exits 0 on
// SIGTERM and that it left no sandbox process or network slot behind.
//
// Run (from the repository root, as root, after `cargo build -p firkin` and
// `scripts/build-envd`):
//   npm ci --prefix crates/e2b/tests/js --no-audit --no-fund
//   node --test crates/e2b/tests/js/

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'

import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  FileType,
  NotFoundError,
  Sandbox,
  SandboxNotFoundError,
  Template,
  TimeoutError,
} from 'e2b'

import {
  driverTests,
  firkinBinary,
  listAll,
  otherDaemons,
  skipReason,
  startDaemon,
  stopDaemon,
} from './daemon.mjs'

const UNKNOWN_ID = 'nosuchsandbox0000000'
const SEMVER = /^\d+\.\d+\.\d+$/
// What a DNS label may be (the id goes into `<port>-<id>.<domain>` host names).
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/

/**
 * An OCI image layout of Debian's static busybox (scripts/setup installs busybox-static) with
 * a few applets, `/bin/bash` handing over to busybox's sh (the SDK runs commands through bash),
 * and /etc/passwd: one uncompressed layer made with the host's tar. Its directory.
 */
function busyboxLayout() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'firkin-js-layout-'))
  const rootfs = path.join(dir, 'rootfs')
  for (const sub of ['bin', 'etc']) fs.mkdirSync(path.join(rootfs, sub), { recursive: true })
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'))
  for (const applet of ['sh', 'cat', 'echo', 'whoami', 'id', 'mkdir']) {
    fs.symlinkSync('busybox', path.join(rootfs, 'bin', applet))
  }
  fs.writeFileSync(path.join(rootfs, 'bin/bash'), '#!/bin/sh\nexec /bin/sh "$@"\n', { mode: 0o755 })
  fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
  fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\n')
  const blobs = path.join(dir, 'layout', 'blobs', 'sha256')
  fs.mkdirSync(blobs, { recursive: true })
  const layerPath = path.join(dir, 'layer.tar')
  const tar = spawnSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', rootfs, '-cf', layerPath, '.'])
  assert.equal(tar.status, 0, String(tar.stderr))
  const blob = (bytes) => {
    const digest = createHash('sha256').update(bytes).digest('hex')
    fs.writeFileSync(path.join(blobs, digest), bytes)
    return { digest: `sha256:${digest}`, size: bytes.length }
  }
  const layer = blob(fs.readFileSync(layerPath))
  const config = blob(Buffer.from(JSON.stringify({
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/bin:/bin'] },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
  })))
  const manifest = blob(Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  })))
  const layout = path.join(dir, 'layout')
  fs.writeFileSync(path.join(layout, 'oci-layout'), '{"imageLayoutVersion": "1.0.0"}')
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      ...manifest,
      annotations: { 'org.opencontainers.image.ref.name': 'latest' },
    }],
  }))
  return layout
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Poll `predicate` until it returns something truthy; return that, or the last value. */
async function waitFor(predicate, timeoutMs, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs
  let result = await predicate()
  while (!result && Date.now() < deadline) {
    await sleep(intervalMs)
    result = await predicate()
  }
  return result
}

/** The sandbox's state, or null once it is gone. */
async function stateOf(sandboxId) {
  try {
    return (await Sandbox.getInfo(sandboxId)).state
  } catch (error) {
    if (error instanceof NotFoundError) return null
    throw error
  }
}

function assertCloseMs(actual, expected, slackMs, what) {
  const delta = Math.abs(actual.getTime() - expected.getTime())
  assert.ok(
    delta <= slackMs,
    `${what}: ${actual.toISOString()} is ${delta} ms from ${expected.toISOString()}`
  )
}

/**
 * What else runs on this host now and reclaims firkin sandboxes and network slots (checked
 * only before the daemon starts, so a failure may be due to something started later).
 */
function interferingProcesses() {
  if (process.env.FIRKIN_SDK_TESTS_SHARE_HOST === '1') return ''
  const others = [
    ...otherDaemons().filter((argv) => !argv.includes(daemonStateDir ?? '\0')),
    ...driverTests(),
  ]
  return others.length
    ? `note: these run beside the test and may have reclaimed its sandboxes or network slots: ${JSON.stringify(others.slice(0, 3))}`
    : ''
}

let daemonStateDir
const reason = skipReason()
if (reason && process.env.FIRKIN_REQUIRE_ROOT_TESTS === '1') {
  // scripts/test and CI: a skipped SDK suite proves nothing, so it fails instead.
  throw new Error(`the JS SDK tests cannot run here (${reason}), and FIRKIN_REQUIRE_ROOT_TESTS=1 forbids skipping them`)
}

describe('firkin serve through the JS e2b SDK 2.51.0', () => {
  const runId = randomUUID().replace(/-/g, '').slice(0, 12)
  let daemon
  const saved = {}

  before(async () => {
    if (reason) return
    daemon = await startDaemon(runId)
    daemonStateDir = daemon.stateDir
    for (const key of [...Object.keys(daemon.env), 'E2B_DEBUG', 'E2B_DOMAIN']) {
      saved[key] = process.env[key]
    }
    Object.assign(process.env, daemon.env)
    delete process.env.E2B_DEBUG
    delete process.env.E2B_DOMAIN
  })

  after(async () => {
    if (!daemon) return
    const problems = []
    try {
      if (daemon.alive()) {
        const left = await listAll(Sandbox, { metadata: { test: runId } })
        if (left.length) {
          problems.push(`sandboxes of this run left: ${left.map((s) => s.sandboxId)}`)
        }
      }
    } catch (error) {
      problems.push(`cannot list the sandboxes of this run: ${error}`)
    }
    problems.push(...(await stopDaemon(daemon, Sandbox)))
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
    if (problems.length) {
      throw new Error(
        `${problems.join('\n')}\nfirkin serve log (${daemon.logPath}), last lines:\n` +
          daemon.logSince(0, 40)
      )
    }
  })

  /**
   * `it(name, fn)` where `fn({ make, meta })` gets `make(opts)`: Sandbox.create with this
   * test's metadata (and a 120 s timeout unless given). Its sandboxes are killed at the end;
   * then none with its metadata may be listed. A failure shows the daemon's log meanwhile.
   */
  function sandboxTest(name, fn) {
    // Skipped one by one (not the whole suite), so that the summary counts them as skipped.
    it(name, { skip: reason ?? false }, async (t) => {
      assert.ok(daemon.alive(), `firkin serve is dead:\n${daemon.logSince(0, 40)}`)
      const offset = daemon.logSize()
      const meta = { test: runId, case: name.replace(/[^a-zA-Z0-9_-]/g, '-').slice(0, 60) }
      const created = []
      const make = async (opts = {}) => {
        const sbx = await Sandbox.create({
          timeoutMs: 120_000,
          ...opts,
          metadata: { ...meta, ...(opts.metadata ?? {}) },
        })
        created.push(sbx)
        return sbx
      }
      try {
        await fn({ make, meta })
      } catch (error) {
        t.diagnostic('firkin serve log during the test:')
        for (const line of (daemon.logSince(offset) || '(nothing logged)').split('\n')) {
          t.diagnostic(line)
        }
        const neighbours = interferingProcesses()
        if (neighbours) t.diagnostic(neighbours)
        throw error
      } finally {
        for (const sbx of created) {
          try {
            await sbx.kill()
          } catch {
            // the leak check below reports what is left
          }
        }
      }
      assert.ok(daemon.alive(), 'firkin serve died during the test')
      const left = (await listAll(Sandbox, { metadata: meta })).map((s) => s.sandboxId)
      for (const id of left) await Sandbox.kill(id)
      assert.deepEqual(left, [], `the test left sandboxes behind: ${left}`)
    })
  }

  // -- create, info, list ---------------------------------------------------------------------

  sandboxTest('create with metadata and envs, then getInfo', async ({ make, meta }) => {
    const startedAfter = Date.now()
    const sbx = await make({
      timeoutMs: 120_000,
      metadata: { extra: 'yes' },
      envs: { FIRKIN_A: 'one', FIRKIN_B: 'two words' },
    })
    assert.match(sbx.sandboxId, DNS_LABEL)
    assert.ok(sbx.sandboxId.length >= 8 && sbx.sandboxId.length <= 63, sbx.sandboxId)

    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.templateId, 'base')
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { ...meta, extra: 'yes' })
    assert.ok(Number.isInteger(info.cpuCount) && info.cpuCount >= 1, `cpuCount ${info.cpuCount}`)
    assert.ok(Number.isInteger(info.memoryMB) && info.memoryMB >= 64, `memoryMB ${info.memoryMB}`)
    assert.match(info.envdVersion, SEMVER)
    assert.ok(info.startedAt instanceof Date && !Number.isNaN(info.startedAt.getTime()))
    assert.ok(info.endAt instanceof Date && !Number.isNaN(info.endAt.getTime()))
    assert.ok(
      info.startedAt.getTime() >= startedAfter - 2000 && info.startedAt.getTime() <= Date.now() + 2000,
      `startedAt ${info.startedAt.toISOString()}`
    )
    assertCloseMs(info.endAt, new Date(info.startedAt.getTime() + 120_000), 2000, 'endAt')
    assert.equal(info.lifecycle?.onTimeout, 'kill')
    assert.equal(await sbx.isRunning(), true)

    // The same through the static API.
    const again = await Sandbox.getInfo(sbx.sandboxId)
    assert.equal(again.sandboxId, sbx.sandboxId)
    assert.deepEqual(again.metadata, info.metadata)

    // Envs given at create are seen by commands; per-command envs add to them and win.
    assert.equal((await sbx.commands.run('echo "$FIRKIN_A|$FIRKIN_B"')).stdout, 'one|two words\n')
    const result = await sbx.commands.run('echo "$FIRKIN_A|$FIRKIN_C"', {
      envs: { FIRKIN_A: '1', FIRKIN_C: '3' },
    })
    assert.equal(result.stdout, '1|3\n')
    assert.equal((await sbx.commands.run('echo $FIRKIN_A')).stdout, 'one\n')
  })

  sandboxTest('Sandbox.list filters by metadata (paginator)', async ({ make, meta }) => {
    // A value with spaces and URL syntax checks the SDK's metadata encoding end to end.
    const odd = 'a b&c=d/é%'
    const a = await make({ metadata: { role: 'a', odd } })
    const b = await make({ metadata: { role: 'b' } })
    const ids = async (metadata, extra = {}) =>
      (await listAll(Sandbox, { metadata, ...extra })).map((s) => s.sandboxId)

    assert.deepEqual((await ids(meta)).sort(), [a.sandboxId, b.sandboxId].sort())
    assert.deepEqual(await ids({ ...meta, role: 'a' }), [a.sandboxId])
    assert.deepEqual(await ids({ ...meta, role: 'b' }), [b.sandboxId])
    assert.deepEqual(await ids({ ...meta, odd }), [a.sandboxId])
    assert.deepEqual(await ids({ ...meta, role: 'nobody' }), [])
    assert.deepEqual(await ids(meta, { state: ['running'] }), (await ids(meta)))
    assert.deepEqual(await ids(meta, { state: ['paused'] }), [])

    const [info] = await listAll(Sandbox, { metadata: { ...meta, role: 'a' } })
    assert.deepEqual(info.metadata, { ...meta, role: 'a', odd })
    assert.equal(info.templateId, 'base')
    assert.equal(info.state, 'running')
    assert.ok(info.startedAt <= info.endAt)
    assert.match(info.envdVersion, SEMVER)

    // Pages of one, oldest first: the paginator follows x-next-token.
    const paginator = Sandbox.list({ query: { metadata: meta }, limit: 1, order: 'asc' })
    assert.equal(paginator.hasNext, true)
    const first = await paginator.nextItems()
    assert.deepEqual(first.map((s) => s.sandboxId), [a.sandboxId])
    assert.equal(paginator.hasNext, true)
    assert.ok(paginator.nextToken, 'no next token after the first page of two')
    const second = await paginator.nextItems()
    assert.deepEqual(second.map((s) => s.sandboxId), [b.sandboxId])
    if (paginator.hasNext) assert.deepEqual(await paginator.nextItems(), [])
    assert.equal(paginator.hasNext, false)
  })

  // -- commands -------------------------------------------------------------------------------

  sandboxTest('commands: stdout, exit code, cwd, user, streaming', async ({ make }) => {
    const sbx = await make()
    const hi = await sbx.commands.run('echo hi')
    assert.equal(hi.stdout, 'hi\n')
    assert.equal(hi.stderr, '')
    assert.equal(hi.exitCode, 0)

    const both = await sbx.commands.run('echo out; echo err >&2')
    assert.deepEqual([both.stdout, both.stderr], ['out\n', 'err\n'])

    await assert.rejects(sbx.commands.run('echo partial; echo oops >&2; exit 3'), (error) => {
      assert.ok(error instanceof CommandExitError, `${error?.constructor?.name}: ${error}`)
      assert.equal(error.exitCode, 3)
      assert.equal(error.stdout, 'partial\n')
      assert.equal(error.stderr, 'oops\n')
      return true
    })
    assert.equal((await sbx.commands.run('true')).exitCode, 0)

    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n')
    assert.equal((await sbx.commands.run('pwd', { cwd: '/' })).stdout, '/\n')

    // The base template's default user is `user`, in its home.
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
    assert.equal((await sbx.commands.run('pwd')).stdout, '/home/user\n')
    assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout, 'root\n')
    assert.equal((await sbx.commands.run('id -u', { user: 'root' })).stdout, '0\n')

    const chunks = []
    const streamed = await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.1; done', {
      onStdout: (data) => chunks.push(data),
    })
    assert.equal(chunks.join(''), '1\n2\n3\n')
    assert.equal(streamed.stdout, '1\n2\n3\n')
  })

  sandboxTest('commands: background command and kill', async ({ make }) => {
    const sbx = await make()
    const handle = await sbx.commands.run('sleep 300', { background: true })
    assert.ok(handle.pid > 0, `pid ${handle.pid}`)
    const pids = async () => (await sbx.commands.list()).map((p) => p.pid)
    assert.ok((await pids()).includes(handle.pid), 'the background command is not listed')
    assert.equal(await handle.kill(), true)
    await assert.rejects(handle.wait(), (error) => {
      assert.ok(error instanceof CommandExitError, `${error?.constructor?.name}: ${error}`)
      assert.notEqual(error.exitCode, 0)
      return true
    })
    assert.ok(
      await waitFor(async () => !(await pids()).includes(handle.pid), 3000, 50),
      'the killed command is still listed after 3 s'
    )
    assert.equal(await sbx.commands.kill(handle.pid), false)

    // A background command's output and exit code, by wait().
    const done = await sbx.commands.run('sleep 0.3; echo done', { background: true })
    const result = await done.wait()
    assert.deepEqual([result.stdout, result.exitCode], ['done\n', 0])
  })

  sandboxTest('commands: timeout', async ({ make }) => {
    const sbx = await make()
    const start = Date.now()
    await assert.rejects(sbx.commands.run('sleep 5', { timeoutMs: 1000 }), (error) => {
      assert.ok(error instanceof TimeoutError, `${error?.constructor?.name}: ${error}`)
      return true
    })
    const elapsed = Date.now() - start
    assert.ok(elapsed < 4000, `a 1 s command timeout took ${elapsed} ms`)
    // The sandbox survives its command's timeout.
    assert.equal((await sbx.commands.run('echo still here')).stdout, 'still here\n')
  })

  // -- files ----------------------------------------------------------------------------------

  sandboxTest('files: write and read text and bytes', async ({ make }) => {
    const sbx = await make()
    const info = await sbx.files.write('/tmp/hello.txt', 'hello, firkin\n')
    assert.equal(info.path, '/tmp/hello.txt')
    assert.equal(info.name, 'hello.txt')
    assert.equal(await sbx.files.read('/tmp/hello.txt'), 'hello, firkin\n')
    assert.equal((await sbx.commands.run('cat /tmp/hello.txt')).stdout, 'hello, firkin\n')

    // Bytes as a Uint8Array and as an ArrayBuffer.
    const data = new Uint8Array(1024).map((_, i) => i % 256)
    await sbx.files.write('/tmp/blob.bin', data)
    const read = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' })
    assert.ok(read instanceof Uint8Array)
    assert.deepEqual(Buffer.from(read), Buffer.from(data))

    const buffer = new Uint8Array([0, 1, 0xff, 0xfe, 10, 13]).buffer
    await sbx.files.write('/tmp/buffer.bin', buffer)
    const back = await sbx.files.read('/tmp/buffer.bin', { format: 'bytes' })
    assert.deepEqual(Buffer.from(back), Buffer.from(buffer))
    assert.equal((await sbx.commands.run('stat -c %s /tmp/buffer.bin')).stdout, '6\n')

    // A stream is uploaded as application/octet-stream (chunked), not as multipart.
    const stream = new Blob(['streamed ', 'upload']).stream()
    await sbx.files.write('/tmp/stream.txt', stream)
    assert.equal(await sbx.files.read('/tmp/stream.txt'), 'streamed upload')

    // Relative paths are in the default user's home; the file belongs to that user.
    await sbx.files.write('notes.txt', 'at home')
    assert.equal((await sbx.commands.run('cat /home/user/notes.txt')).stdout, 'at home')
    assert.equal(await sbx.files.read('notes.txt'), 'at home')
    assert.equal((await sbx.commands.run('stat -c %U /home/user/notes.txt')).stdout, 'user\n')
  })

  sandboxTest('files: list, exists, remove', async ({ make }) => {
    const sbx = await make()
    assert.equal(await sbx.files.makeDir('/tmp/dir/sub'), true)
    await sbx.files.write('/tmp/dir/a.txt', 'a')
    await sbx.files.write('/tmp/dir/b.txt', 'bb')

    const entries = Object.fromEntries((await sbx.files.list('/tmp/dir')).map((e) => [e.name, e]))
    assert.deepEqual(Object.keys(entries).sort(), ['a.txt', 'b.txt', 'sub'])
    assert.equal(entries['a.txt'].type, FileType.FILE)
    assert.equal(entries['a.txt'].path, '/tmp/dir/a.txt')
    assert.equal(entries['b.txt'].size, 2)
    assert.equal(entries.sub.type, FileType.DIR)

    assert.equal(await sbx.files.exists('/tmp/dir/a.txt'), true)
    assert.equal(await sbx.files.exists('/tmp/dir/sub'), true)
    assert.equal(await sbx.files.exists('/tmp/dir/nope'), false)

    await sbx.files.remove('/tmp/dir/a.txt')
    assert.equal(await sbx.files.exists('/tmp/dir/a.txt'), false)
    await assert.rejects(sbx.files.read('/tmp/dir/a.txt'), (error) => {
      assert.ok(error instanceof FileNotFoundError, `${error?.constructor?.name}: ${error}`)
      return true
    })
    await sbx.files.remove('/tmp/dir')
    assert.equal(await sbx.files.exists('/tmp/dir'), false)
  })

  sandboxTest('files: 5 MiB round trip', async ({ make }) => {
    const sbx = await make()
    const data = randomBytes(5 << 20)
    const digest = createHash('sha256').update(data).digest('hex')
    await sbx.files.write('/tmp/big.bin', new Uint8Array(data))
    const remote = (await sbx.commands.run('sha256sum /tmp/big.bin')).stdout.split(/\s+/)[0]
    assert.equal(remote, digest)
    const read = await sbx.files.read('/tmp/big.bin', { format: 'bytes' })
    assert.equal(read.length, data.length)
    assert.equal(createHash('sha256').update(read).digest('hex'), digest)
  })

  // -- lifecycle ------------------------------------------------------------------------------

  sandboxTest('setTimeout shortens to 2 s, then the sandbox is gone', async ({ make, meta }) => {
    const sbx = await make({ timeoutMs: 60_000 })
    await sbx.setTimeout(600_000)
    assertCloseMs((await sbx.getInfo()).endAt, new Date(Date.now() + 600_000), 3000, 'endAt')

    const start = Date.now()
    await sbx.setTimeout(2000)
    assertCloseMs((await sbx.getInfo()).endAt, new Date(Date.now() + 2000), 1500, 'endAt')
    assert.equal(await sbx.isRunning(), true)
    const gone = await waitFor(async () => (await stateOf(sbx.sandboxId)) === null, 5000)
    const elapsed = Date.now() - start
    assert.ok(gone, `still there ${elapsed} ms after a 2 s timeout`)
    assert.ok(elapsed >= 1500, `gone after ${elapsed} ms, before its 2 s timeout`)
    assert.equal(await sbx.isRunning(), false)
    await assert.rejects(sbx.getInfo(), NotFoundError)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
    assert.deepEqual(await listAll(Sandbox, { metadata: meta }), [])
  })

  sandboxTest('pause, then connect resumes', async ({ make, meta }) => {
    const sbx = await make()
    await sbx.files.write('/tmp/kept', 'state')
    const sleeper = await sbx.commands.run('sleep 1000', { background: true })

    assert.equal(await sbx.pause(), true)
    assert.equal((await sbx.getInfo()).state, 'paused')
    // Pausing a paused sandbox is a 409, which the SDK answers with false.
    assert.equal(await sbx.pause(), false)
    assert.equal(await Sandbox.pause(sbx.sandboxId), false)
    const paused = await listAll(Sandbox, { metadata: meta, state: ['paused'] })
    assert.deepEqual(paused.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal(paused[0].state, 'paused')
    assert.deepEqual(await listAll(Sandbox, { metadata: meta, state: ['running'] }), [])

    const again = await sbx.connect()
    assert.equal(again.sandboxId, sbx.sandboxId)
    assert.equal((await sbx.getInfo()).state, 'running')
    assert.equal((await sbx.commands.run('cat /tmp/kept')).stdout, 'state')
    // The pause kept memory: the process started before it still runs.
    assert.ok((await sbx.commands.list()).map((p) => p.pid).includes(sleeper.pid))
    assert.equal(await sleeper.kill(), true)

    // Static connect to a paused sandbox resumes it too, and gives a working handle.
    assert.equal(await Sandbox.pause(sbx.sandboxId), true)
    const other = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 60_000 })
    assert.equal(other.sandboxId, sbx.sandboxId)
    assert.equal((await other.getInfo()).state, 'running')
    assert.equal(await other.files.read('/tmp/kept'), 'state')
    assert.equal((await other.commands.run('echo back')).stdout, 'back\n')
  })

  sandboxTest('kill is true, then false', async ({ make, meta }) => {
    const sbx = await make()
    assert.equal(await sbx.kill(), true)
    assert.equal(await sbx.kill(), false)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
    assert.equal(await sbx.isRunning(), false)
    await assert.rejects(sbx.getInfo(), NotFoundError)
    assert.deepEqual(await listAll(Sandbox, { metadata: meta }), [])
  })

  // -- errors ---------------------------------------------------------------------------------

  sandboxTest('a wrong API key is an AuthenticationError', async ({ make, meta }) => {
    const apiKey = 'e2b_wrong'
    const isAuth = (error) => {
      assert.ok(error instanceof AuthenticationError, `${error?.constructor?.name}: ${error}`)
      return true
    }
    await assert.rejects(Sandbox.create({ metadata: meta, apiKey }), isAuth)
    await assert.rejects(Sandbox.list({ query: { metadata: meta }, apiKey }).nextItems(), isAuth)
    await assert.rejects(Sandbox.getInfo(UNKNOWN_ID, { apiKey }), isAuth)

    // ...and does not touch a sandbox.
    const sbx = await make()
    await assert.rejects(Sandbox.kill(sbx.sandboxId, { apiKey }), isAuth)
    await assert.rejects(Sandbox.setTimeout(sbx.sandboxId, 1000, { apiKey }), isAuth)
    await assert.rejects(Sandbox.connect(sbx.sandboxId, { apiKey }), isAuth)
    assert.equal(await sbx.isRunning(), true)
    assert.equal((await sbx.getInfo()).state, 'running')
    assert.equal((await sbx.commands.run('echo ok')).stdout, 'ok\n')
  })

  sandboxTest('a template built with the JS Template SDK runs its steps', async ({ meta }) => {
    // The base: a busybox image imported with the daemon's own CLI (as the Python tests do).
    const base = `js-busybox-${runId}:v1`
    const layout = busyboxLayout()
    const imported = spawnSync(
      firkinBinary(),
      ['--json', 'template', '--state-dir', daemon.stateDir, 'import', layout, '--name', base],
      { encoding: 'utf8' }
    )
    fs.rmSync(path.dirname(layout), { recursive: true, force: true })
    assert.equal(imported.status, 0, imported.stderr)
    const name = `js-built-${runId}`
    const logs = []
    const template = Template()
      .fromTemplate(base)
      .setEnvs({ FROM_JS: 'yes' })
      .runCmd('echo "built by js: $FROM_JS" > js.txt')
    await Template.build(template, name, { onBuildLogs: (entry) => logs.push(entry.message) })
    assert.ok(logs.some((line) => line.includes('RUN echo')), logs.join('\n'))
    const sbx = await Sandbox.create(name, { timeoutMs: 60_000, metadata: meta })
    try {
      assert.equal(await sbx.files.read('/home/user/js.txt'), 'built by js: yes\n')
      assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
    } finally {
      await sbx.kill()
    }
  })

  sandboxTest('an unknown sandbox id is not found', async () => {
    const isNotFound = (error) => {
      assert.ok(error instanceof SandboxNotFoundError, `${error?.constructor?.name}: ${error}`)
      assert.ok(error instanceof NotFoundError)
      return true
    }
    await assert.rejects(Sandbox.connect(UNKNOWN_ID), isNotFound)
    await assert.rejects(Sandbox.getInfo(UNKNOWN_ID), isNotFound)
    await assert.rejects(Sandbox.setTimeout(UNKNOWN_ID, 30_000), isNotFound)
    await assert.rejects(Sandbox.pause(UNKNOWN_ID), isNotFound)
    assert.equal(await Sandbox.kill(UNKNOWN_ID), false)
  })
})

if (reason) {
  // Also say it once where a reader of the summary looks.
  console.log(`skipped the JS SDK tests of firkin serve: ${reason}`)
}
