// Starts and stops one real `firkin serve` for the JS SDK tests, the same way the Python SDK
// tests' conftest.py (crates/e2b/tests/sdk/conftest.py) does: a free loopback port, a fresh
// state directory (0700 from mkdtemp; the daemon opens it to 0711), the static envd from scripts/build-envd, a random API key, and
// the `export E2B_...` lines the daemon prints (recipe A of E2B-CONTRACT.md). At the end every
// sandbox still listed is killed and reported, the daemon gets SIGTERM and must exit 0, no
// process may still run in the state directory's sandboxes and no network slot (fk<tag>h* veth) it
// made may be left.
//
// Nothing is built here: run `cargo build -p firkin` and `scripts/build-envd` first
// (FIRKIN_BIN and FIRKIN_ENVD_BIN point elsewhere).

import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..')

export function firkinBinary() {
  return process.env.FIRKIN_BIN || path.join(REPO, 'target', 'debug', 'firkin')
}

export function envdBinary() {
  return (
    process.env.FIRKIN_ENVD_BIN ||
    path.join(REPO, 'target', 'x86_64-unknown-linux-gnu', 'envd', 'firkin-envd')
  )
}

function procEntries() {
  return fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))
}

function readProc(pid, file) {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`)
  } catch {
    return null
  }
}

function cmdline(pid) {
  const raw = readProc(pid, 'cmdline')
  if (!raw) return null
  const argv = raw.toString('utf8').split('\0')
  if (argv.length && argv[argv.length - 1] === '') argv.pop()
  return argv
}

/** Command lines of `firkin serve` processes already running on this host. */
export function otherDaemons() {
  const found = []
  for (const pid of procEntries()) {
    const argv = cmdline(pid)
    if (argv && argv.length > 1 && argv[0].endsWith('firkin') && argv[1] === 'serve') {
      found.push(argv.join(' ').trim())
    }
  }
  return found
}

/** Root mounts of firkin sandboxes running on this host (one per sandbox). */
export function foreignSandboxes() {
  const roots = new Set()
  for (const pid of procEntries()) {
    const info = readProc(pid, 'mountinfo')
    if (!info) continue
    const first = info.toString('utf8').split('\n', 1)[0]
    const match = / \/ \/ .* - overlay \S+ \S*upperdir=([^,]+)/.exec(first)
    if (match && first.includes('/templates/base/rootfs')) roots.add(match[1])
  }
  return [...roots].sort()
}

// Test and bench executables of firkin-linux, which make sandboxes and network slots too.
const DRIVER_USERS =
  /^(firkin_linux|create|driver|isolation|launch|limits|net|restart|cgroup|base_template)-[0-9a-f]{16}$/

/** Command lines of firkin-linux tests and benches running from a target/ directory. */
export function driverTests() {
  const found = []
  for (const pid of procEntries()) {
    if (Number(pid) === process.pid) continue
    let exe
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`)
    } catch {
      continue
    }
    if (path.basename(path.dirname(exe)) === 'deps' && DRIVER_USERS.test(path.basename(exe))) {
      found.push((cmdline(pid) || []).join(' ').trim())
    }
  }
  return found
}

/** `name:ifindex` of the firkin slot veths on this host (`fk<instance tag>h<N>`, any instance). */
export function networkSlots() {
  const slots = new Set()
  let links = []
  try {
    links = fs.readdirSync('/sys/class/net')
  } catch {
    return slots
  }
  for (const name of links) {
    if (!/^fk[0-9a-f]{5}h\d+$/.test(name)) continue
    try {
      slots.add(`${name}:${fs.readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim()}`)
    } catch {
      // gone meanwhile
    }
  }
  return slots
}

/** [pid, command line] of processes whose mounts use `stateDir`: sandbox processes. */
export function processesRootedIn(stateDir) {
  const found = []
  for (const pid of procEntries()) {
    const info = readProc(pid, 'mountinfo')
    if (!info || !info.includes(stateDir)) continue
    found.push([Number(pid), (cmdline(pid) || []).join(' ').trim()])
  }
  return found
}

/**
 * Why the tests cannot run here, or undefined when they can. Synchronous, so that it can be
 * given to `describe(..., { skip })`.
 */
export function skipReason() {
  if (typeof process.geteuid === 'function' && process.geteuid() !== 0) {
    return (
      'the E2B SDK tests need root (firkin serve creates namespaces, cgroups and network' +
      ' devices); run them as root'
    )
  }
  if (!fs.existsSync(firkinBinary())) {
    return `${firkinBinary()} does not exist: run \`cargo build -p firkin\` (or set FIRKIN_BIN)`
  }
  if (!fs.existsSync(envdBinary())) {
    return `${envdBinary()} does not exist: run \`scripts/build-envd\` (or set FIRKIN_ENVD_BIN)`
  }
  if (process.env.FIRKIN_SDK_TESTS_SHARE_HOST !== '1') {
    // A starting daemon reclaims every firkin sandbox cgroup its own state does not know and
    // every firkin network slot (host-wide): do not start one beside another user of them.
    const others = otherDaemons()
    if (others.length) {
      return (
        'another firkin serve runs on this host and a new daemon would reclaim (kill) its' +
        ` sandboxes and network slots: ${JSON.stringify(others)}; stop it, or set` +
        ' FIRKIN_SDK_TESTS_SHARE_HOST=1'
      )
    }
    const tests = driverTests()
    if (tests.length) {
      return (
        'firkin-linux tests or benches run on this host and a new daemon would reclaim their' +
        ` sandboxes and network slots: ${JSON.stringify(tests.slice(0, 3))}; wait for them, or` +
        ' set FIRKIN_SDK_TESTS_SHARE_HOST=1'
      )
    }
    const foreign = foreignSandboxes()
    if (foreign.length) {
      return (
        `${foreign.length} firkin sandbox(es) of someone else run on this host and a new daemon` +
        ` would reclaim them: ${JSON.stringify(foreign.slice(0, 5))}; stop their owner, or set` +
        ' FIRKIN_SDK_TESTS_SHARE_HOST=1'
      )
    }
  }
  return undefined
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

const ANSI = /\x1b\[[0-9;]*m/g

/** The running `firkin serve` of this test run. */
export class Daemon {
  constructor({ child, logPath, stateDir, env, runId, slotsBefore }) {
    this.child = child
    this.logPath = logPath
    this.stateDir = stateDir
    this.env = env
    this.runId = runId
    this.slotsBefore = slotsBefore
    this.exit = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve({ code: child.exitCode, signal: child.signalCode })
      } else {
        child.once('exit', (code, signal) => resolve({ code, signal }))
      }
    })
  }

  get url() {
    return this.env.E2B_API_URL
  }

  get apiKey() {
    return this.env.E2B_API_KEY
  }

  alive() {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  logSize() {
    try {
      return fs.statSync(this.logPath).size
    } catch {
      return 0
    }
  }

  /** The daemon's log from byte `offset` on, at most `maxLines` (the last ones). */
  logSince(offset = 0, maxLines = 80) {
    let text
    try {
      const fd = fs.openSync(this.logPath, 'r')
      try {
        const size = fs.fstatSync(fd).size
        const buffer = Buffer.alloc(Math.max(0, size - offset))
        fs.readSync(fd, buffer, 0, buffer.length, offset)
        text = buffer.toString('utf8')
      } finally {
        fs.closeSync(fd)
      }
    } catch (error) {
      return `(cannot read ${this.logPath}: ${error})`
    }
    let lines = text.replace(ANSI, '').split('\n')
    if (lines.length && lines[lines.length - 1] === '') lines.pop()
    if (lines.length > maxLines) {
      lines = [`... (${lines.length - maxLines} earlier lines)`, ...lines.slice(-maxLines)]
    }
    return lines.join('\n')
  }
}

/**
 * Start `firkin serve` and wait (30 s at most) for the `export E2B_...` lines it prints.
 * Throws (with the daemon's log) when it does not print them.
 */
export async function startDaemon(runId) {
  const port = await freePort()
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `firkin-e2b-js-sdk-${runId}-`))
  // mkdtemp makes it 0700; the daemon itself opens it as far as the sandboxes need (0711).
  fs.mkdirSync(path.join(REPO, 'target'), { recursive: true })
  const logPath = path.join(REPO, 'target', `e2b-js-sdk-tests-${port}.log`)
  const apiKey = `e2b_test_${randomUUID().replace(/-/g, '')}`
  const logFd = fs.openSync(logPath, 'w')
  const slotsBefore = networkSlots()
  const child = spawn(
    firkinBinary(),
    [
      'serve',
      '--state-dir',
      stateDir,
      '--listen',
      `127.0.0.1:${port}`,
      '--envd-bin',
      envdBinary(),
    ],
    {
      stdio: ['ignore', 'pipe', logFd],
      env: {
        PATH: process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin',
        FIRKIN_LOG: 'info',
        NO_COLOR: '1',
        // Never on the command line (readable by every user): the environment.
        FIRKIN_API_KEY: apiKey,
      },
    }
  )
  fs.closeSync(logFd)
  // The daemon prints no key it was given (only one it generated): the key is ours.
  const env = { E2B_API_KEY: apiKey }
  const daemon = new Daemon({ child, logPath, stateDir, env, runId, slotsBefore })

  const wanted = ['E2B_API_URL', 'E2B_SANDBOX_URL']
  // The banner's line about the key comes after the URLs: wait for it too, to check it.
  let leakedKey = false
  let keyLine = false
  const lines = readline.createInterface({ input: child.stdout })
  const ready = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 30_000)
    const done = (value) => {
      clearTimeout(timer)
      resolve(value)
    }
    lines.on('line', (line) => {
      if (line.includes(apiKey)) leakedKey = true
      if (line.includes('E2B_API_KEY')) keyLine = true
      const match = /^export (E2B_[A-Z_]+)=(.*)$/.exec(line.trim())
      if (match && match[1] !== 'E2B_API_KEY') env[match[1]] = match[2]
      if (keyLine && wanted.every((key) => key in env)) done(true)
    })
    lines.on('close', () => done(wanted.every((key) => key in env)))
    child.on('error', () => done(false))
  })
  // Keep draining stdout so the daemon never blocks on a full pipe.
  child.stdout.resume()
  if (leakedKey) {
    child.kill('SIGKILL')
    await daemon.exit
    fs.rmSync(stateDir, { recursive: true, force: true })
    throw new Error('firkin serve printed the API key it was given in FIRKIN_API_KEY')
  }
  if (!ready) {
    child.kill('SIGKILL')
    const { code, signal } = await daemon.exit
    fs.rmSync(stateDir, { recursive: true, force: true })
    throw new Error(
      `firkin serve printed no export lines within 30 s (exit ${code ?? signal});` +
        ` its log (${logPath}):\n${daemon.logSince(0)}`
    )
  }
  const expectedUrl = `http://127.0.0.1:${port}`
  const problems = []
  if (env.E2B_API_URL !== expectedUrl) problems.push(`E2B_API_URL=${env.E2B_API_URL}`)
  if (env.E2B_SANDBOX_URL !== expectedUrl) problems.push(`E2B_SANDBOX_URL=${env.E2B_SANDBOX_URL}`)
  if (problems.length) {
    child.kill('SIGKILL')
    await daemon.exit
    throw new Error(`unexpected export lines (wanted ${expectedUrl}): ${problems.join('; ')}`)
  }
  return daemon
}

/** Every sandbox the daemon lists (running or paused), over all pages. */
export async function listAll(Sandbox, query) {
  const paginator = Sandbox.list({ query, limit: 100 })
  const items = []
  while (paginator.hasNext) items.push(...(await paginator.nextItems()))
  return items
}

/** Kill every sandbox the daemon lists; return their ids. */
export async function killAllSandboxes(Sandbox) {
  const ids = (await listAll(Sandbox)).map((info) => info.sandboxId)
  for (const id of ids) await Sandbox.kill(id)
  return ids
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Kill what is left, SIGTERM the daemon and check that it exits 0 and leaves no sandbox
 * process and no network slot. Returns the list of problems (empty when all is well).
 */
export async function stopDaemon(daemon, Sandbox) {
  const problems = []
  if (daemon.alive()) {
    try {
      const leftovers = await killAllSandboxes(Sandbox)
      if (leftovers.length) problems.push(`sandboxes left at the end of the run: ${leftovers}`)
      const remaining = await killAllSandboxes(Sandbox)
      if (remaining.length) problems.push(`sandboxes still listed after being killed: ${remaining}`)
    } catch (error) {
      problems.push(`cannot list or kill the remaining sandboxes: ${error}`)
    }
    daemon.child.kill('SIGTERM')
    let timer
    const exited = await Promise.race([
      daemon.exit,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), 15_000)
      }),
    ])
    clearTimeout(timer)
    if (exited === null) {
      daemon.child.kill('SIGKILL')
      await daemon.exit
      problems.push('firkin serve did not exit within 15 s of SIGTERM')
    }
  }
  const { code, signal } = await daemon.exit
  if (code !== 0) problems.push(`firkin serve exited with ${code ?? `signal ${signal}`}`)
  // Every sandbox was killed before the shutdown: no process may still live in one.
  const stray = processesRootedIn(daemon.stateDir)
  if (stray.length) {
    problems.push(`processes still running in sandboxes after the shutdown: ${JSON.stringify(stray)}`)
    for (const [pid] of stray) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  } else {
    fs.rmSync(daemon.stateDir, { recursive: true, force: true })
  }
  // With no sandbox left, the daemon must not leave network slots behind either.
  await sleep(200)
  const newSlots = [...networkSlots()]
    .filter((slot) => !daemon.slotsBefore.has(slot))
    .map((slot) => slot.split(':')[0])
    .sort()
  if (newSlots.length) {
    problems.push(
      'network slots (fk<tag>h* veths, <state>/netns) the daemon made and left after its' +
        ` shutdown, with no sandbox left: ${newSlots}`
    )
  }
  return problems
}
