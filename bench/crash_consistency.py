"""Crash consistency and full disk for `kagi serve`: see bench/crash_consistency.sh.

Kill loop. A release `kagi serve` on one data directory; WORKERS threads drive a mixed KMS
workload through boto3 (create keys, encrypt, decrypt, rotate on demand, disable and enable,
schedule and cancel deletion, create an EXTERNAL key and import its material), each worker on
keys of its own, so each key's operations are sequential. Every acknowledged operation is
appended to acks.jsonl (with its request id) before the next is sent; an operation that was
sent but got no answer is "in flight", and may or may not have happened. At a random moment the
server gets SIGKILL. Then, with the server dead: `kagi audit verify` must pass over the whole
trail, and every acknowledged operation's request id must be in it (fail closed: no answer
before the line is written). Then the server restarts and every key must be in its acknowledged
state (or in the state its in-flight operation would have left), with at least its acknowledged
rotations, and every acknowledged ciphertext must decrypt to its plaintext (or, under a key
that is disabled or pending deletion, fail with exactly that state's error). Then the next
round's workload starts on the restarted server.

Full disk. The same on a data directory in a small file system: fill it, check that operations
fail with a KMS error (HTTP 500 with a message, or a 4xx), that the server stays up and logs no
panic, free the space, check that service resumes (within a deadline), that every earlier
ciphertext decrypts and key is intact, across a restart too, and that the audit trail verifies.

Prints a summary; exits 1 when a check failed.
"""

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ACCESS_KEY_ID = "AKIAKAGICRASH0000000"
SECRET = "crash-secret-0123456789"
REGION = "us-east-1"
STATE_ERRORS = {"Disabled": "DisabledException", "PendingDeletion": "KMSInvalidStateException"}


class Failures:
    """Check failures: counted and printed, the run goes on."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def add(self, message):
        with self.lock:
            self.items.append(message)
        print(f"FAIL: {message}", flush=True)


FAILURES = Failures()


# --- the server ------------------------------------------------------------------------------


class Server:
    """`kagi serve` on `data_dir`, on port 0; only this process's own PID is ever signalled."""

    def __init__(self, kagi, work, data_dir, name):
        self.kagi, self.work, self.data_dir = kagi, work, data_dir
        self.config = os.path.join(work, f"{name}.toml")
        self.ready = os.path.join(work, f"{name}.ready")
        self.log_path = os.path.join(work, f"{name}.log")
        self.proc = None
        with open(self.config, "w") as f:
            f.write(
                f'[keystore]\ndata_dir = "{data_dir}"\n[api]\nlisten = "127.0.0.1:0"\n'
                f'[[principals]]\nname = "crash"\naccess_key_id = "{ACCESS_KEY_ID}"\n'
                f'secret = "{SECRET}"\nadministrator = true\n'
                "[quotas]\nsymmetric = 1000000.0\nasymmetric = 1000000.0\n"
                "management = 1000000.0\n"
            )

    def run(self, *args, check=True):
        """Runs a direct `kagi` command on the data directory (server stopped)."""
        return subprocess.run(
            [self.kagi, "--data-dir", self.data_dir, *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def start(self, deadline=60):
        if os.path.exists(self.ready):
            os.remove(self.ready)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [self.kagi, "serve", "--config", self.config, "--ready-file", self.ready],
            stdout=log,
            stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        log.close()
        end = time.monotonic() + deadline
        while not (os.path.exists(self.ready) and os.path.getsize(self.ready) > 0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"kagi serve exited with {self.proc.returncode}: see {self.log_path}")
            if time.monotonic() > end:
                raise RuntimeError("kagi serve did not become ready")
            time.sleep(0.05)
        ready = json.load(open(self.ready))
        self.endpoint = f"https://{ready['api']}"
        self.ca = ready["ca_bundle"]

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self):
        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name=REGION,
            verify=self.ca,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def audit_verify(self):
        """`kagi audit verify` over the data directory's trail; (ok, output)."""
        out = self.run("audit", "verify", check=False)
        return out.returncode == 0, (out.stdout + out.stderr).strip()

    def audit_request_ids(self):
        """The request ids of every line of the trail (read as JSON lines)."""
        ids = set()
        trail = os.path.join(self.data_dir, "audit")
        for name in sorted(os.listdir(trail)):
            if not (name.startswith("audit-") and name.endswith(".log")):
                continue
            with open(os.path.join(trail, name), "rb") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    request_id = record.get("request_id") or record.get("event", {}).get("request_id")
                    if request_id:
                        ids.add(request_id)
        return ids

    def log_has_panic(self):
        with open(self.log_path, errors="replace") as f:
            return "panicked" in f.read()


# --- the model of what was acknowledged ------------------------------------------------------


class Key:
    def __init__(self, key_id, origin):
        self.id = key_id
        self.origin = origin
        self.state = "Enabled" if origin == "AWS_KMS" else "PendingImport"
        self.rotations = 0
        # What an unanswered operation would have changed: ("state", S) or ("rotation",).
        self.in_flight = None


class Model:
    def __init__(self, path):
        self.keys = {}
        self.ciphertexts = []  # (key id, blob, plaintext, context)
        self.request_ids = []  # (operation, request id) of acknowledged operations
        self.lock = threading.Lock()
        self.log = open(path, "a")
        self.acks = 0

    def ack(self, operation, response, **fields):
        request_id = response["ResponseMetadata"]["RequestId"]
        with self.lock:
            self.acks += 1
            self.request_ids.append((operation, request_id))
            record = {"op": operation, "request_id": request_id, **fields}
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()


class Worker(threading.Thread):
    """Random operations on its own keys until a call gets no answer (the server died)."""

    def __init__(self, server, model, seed, stop):
        super().__init__(daemon=True)
        self.kms = server.client()
        self.model = model
        self.rng = random.Random(seed)
        self.stop = stop
        self.keys = []
        self.refusals = []

    def run(self):
        try:
            while not self.stop.is_set():
                self.step()
        except (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.SSLError,
                botocore.exceptions.HTTPClientError,
                ConnectionError):
            return  # the server died: whatever was in flight stays in flight

    def call(self, key, effect, operation, **kwargs):
        """Sends one operation with `effect` in flight on `key` (None: no key)."""
        if key is not None:
            key.in_flight = effect
        try:
            response = getattr(self.kms, operation)(**kwargs)
        except ClientError as error:
            # A refusal changes nothing; the model should not have asked for one.
            if key is not None:
                key.in_flight = None
            code = error.response["Error"]["Code"]
            self.refusals.append(f"{operation}: {code}: {error.response['Error'].get('Message')}")
            return None
        if key is not None:
            key.in_flight = None
        return response

    def step(self):
        m = self.model
        usable = [k for k in self.keys if k.state == "Enabled"]
        roll = self.rng.random()
        if not usable or roll < 0.10:
            response = self.call(None, None, "create_key", Description="crash")
            if response:
                key = Key(response["KeyMetadata"]["KeyId"], "AWS_KMS")
                with m.lock:
                    m.keys[key.id] = key
                self.keys.append(key)
                m.ack("CreateKey", response, key=key.id)
        elif roll < 0.13:
            self.import_key()
        elif roll < 0.55:
            key = self.rng.choice(usable)
            plaintext = os.urandom(self.rng.randint(1, 256))
            context = {"n": str(self.rng.randint(0, 1 << 30))}
            response = self.call(key, None, "encrypt", KeyId=key.id, Plaintext=plaintext,
                                 EncryptionContext=context)
            if response:
                blob = response["CiphertextBlob"]
                with m.lock:
                    m.ciphertexts.append((key.id, blob, plaintext, context))
                m.ack("Encrypt", response, key=key.id, blob=base64.b64encode(blob).decode())
        elif roll < 0.65:
            with m.lock:
                sample = self.rng.sample(m.ciphertexts, min(1, len(m.ciphertexts)))
            for key_id, blob, plaintext, context in sample:
                key = m.keys[key_id]
                if key.state != "Enabled" or key.in_flight:
                    continue
                response = self.call(None, None, "decrypt", CiphertextBlob=blob,
                                     EncryptionContext=context)
                if response and response["Plaintext"] != plaintext:
                    FAILURES.add(f"Decrypt under {key_id} returned another plaintext")
        elif roll < 0.75:
            candidates = [k for k in usable if k.origin == "AWS_KMS"]
            if candidates:
                key = self.rng.choice(candidates)
                response = self.call(key, ("rotation",), "rotate_key_on_demand", KeyId=key.id)
                if response:
                    key.rotations += 1
                    m.ack("RotateKeyOnDemand", response, key=key.id)
        elif roll < 0.85:
            key = self.rng.choice([k for k in self.keys if k.state in ("Enabled", "Disabled")]
                                  or usable)
            if key.state == "Enabled":
                response = self.call(key, ("state", "Disabled"), "disable_key", KeyId=key.id)
                new = "Disabled"
            else:
                response = self.call(key, ("state", "Enabled"), "enable_key", KeyId=key.id)
                new = "Enabled"
            if response:
                key.state = new
                m.ack("DisableKey" if new == "Disabled" else "EnableKey", response, key=key.id)
        elif roll < 0.92:
            key = self.rng.choice(usable)
            response = self.call(key, ("state", "PendingDeletion"), "schedule_key_deletion",
                                 KeyId=key.id, PendingWindowInDays=7)
            if response:
                key.state = "PendingDeletion"
                m.ack("ScheduleKeyDeletion", response, key=key.id)
        else:
            pending = [k for k in self.keys if k.state == "PendingDeletion"]
            if pending:
                key = self.rng.choice(pending)
                response = self.call(key, ("state", "Disabled"), "cancel_key_deletion",
                                     KeyId=key.id)
                if response:
                    key.state = "Disabled"
                    m.ack("CancelKeyDeletion", response, key=key.id)

    def import_key(self):
        m = self.model
        response = self.call(None, None, "create_key", Origin="EXTERNAL", Description="crash byok")
        if not response:
            return
        key = Key(response["KeyMetadata"]["KeyId"], "EXTERNAL")
        with m.lock:
            m.keys[key.id] = key
        self.keys.append(key)
        m.ack("CreateKey", response, key=key.id, origin="EXTERNAL")
        params = self.call(key, None, "get_parameters_for_import", KeyId=key.id,
                           WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
        if not params:
            return
        public = serialization.load_der_public_key(params["PublicKey"])
        material = os.urandom(32)
        wrapped = public.encrypt(
            material,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
        response = self.call(key, ("state", "Enabled"), "import_key_material", KeyId=key.id,
                             ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped,
                             ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        if response:
            key.state = "Enabled"
            m.ack("ImportKeyMaterial", response, key=key.id)


# --- checks ----------------------------------------------------------------------------------


def check_keys(kms, model, keys):
    """Each key is in its acknowledged state, or the one its in-flight operation leads to."""
    for key in keys:
        try:
            meta = kms.describe_key(KeyId=key.id)["KeyMetadata"]
        except ClientError as error:
            FAILURES.add(f"acknowledged key {key.id} ({key.state}): {error}")
            continue
        actual = meta["KeyState"]
        allowed = {key.state}
        if key.in_flight and key.in_flight[0] == "state":
            allowed.add(key.in_flight[1])
        if actual not in allowed:
            FAILURES.add(f"key {key.id}: state {actual}, acknowledged {key.state} "
                         f"(in flight: {key.in_flight})")
        else:
            key.state = actual
        if key.origin == "AWS_KMS" and key.state in ("Enabled", "Disabled"):
            rotations = kms.list_key_rotations(KeyId=key.id, Limit=1000).get("Rotations", [])
            on_demand = [r for r in rotations if r.get("RotationType") == "ON_DEMAND"]
            low, high = key.rotations, key.rotations + (key.in_flight == ("rotation",))
            if not low <= len(on_demand) <= high:
                FAILURES.add(f"key {key.id}: {len(on_demand)} rotations, acknowledged {low}")
            key.rotations = len(on_demand)
        key.in_flight = None


def check_ciphertexts(kms, model, ciphertexts):
    for key_id, blob, plaintext, context in ciphertexts:
        key = model.keys[key_id]
        try:
            out = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if STATE_ERRORS.get(key.state) != code:
                FAILURES.add(f"ciphertext under {key_id} ({key.state}) does not decrypt: {code}")
            continue
        if key.state != "Enabled":
            FAILURES.add(f"ciphertext under {key_id} decrypts while {key.state}")
        if out["Plaintext"] != plaintext:
            FAILURES.add(f"ciphertext under {key_id} decrypts to another plaintext")


def check_audit(server, model, checked):
    ok, output = server.audit_verify()
    if not ok:
        FAILURES.add(f"kagi audit verify: {output}")
    ids = server.audit_request_ids()
    missing = [(op, rid) for op, rid in model.request_ids[checked:] if rid not in ids]
    for op, rid in missing:
        FAILURES.add(f"acknowledged {op} (request {rid}) has no audit line")
    return len(model.request_ids), output


# --- the kill loop ---------------------------------------------------------------------------


def kill_loop(args):
    data = os.path.join(args.work, "kill-data")
    server = Server(args.kagi, args.work, data, "kill")
    server.run("init")
    model = Model(os.path.join(args.work, "acks.jsonl"))
    rng = random.Random(args.seed)
    server.start()
    audited = 0
    refusals = []
    started = time.monotonic()
    for round_no in range(1, args.iterations + 1):
        stop = threading.Event()
        workers = [Worker(server, model, rng.random(), stop) for _ in range(args.workers)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(args.min_run, args.max_run))
        server.kill9()
        stop.set()
        for w in workers:
            w.join(timeout=60)
            refusals += w.refusals
        audited, verified = check_audit(server, model, audited)
        server.start()
        kms = server.client()
        with model.lock:
            keys = list(model.keys.values())
            ciphertexts = list(model.ciphertexts)
        # Every key touched lately and every recent ciphertext; a sample of the older ones
        # (every one in the last round).
        last = round_no == args.iterations
        recent = set(k.id for w in workers for k in w.keys)
        check = [k for k in keys if last or k.in_flight or k.id in recent
                 or rng.random() < 0.1]
        check_keys(kms, model, check)
        fresh = ciphertexts if last else ciphertexts[-400:] + rng.sample(
            ciphertexts[:-400], min(100, max(0, len(ciphertexts) - 400)))
        check_ciphertexts(kms, model, fresh)
        print(f"round {round_no}: {model.acks} acknowledged operations so far, "
              f"{len(keys)} keys, {len(ciphertexts)} ciphertexts; audit: "
              f"{verified.splitlines()[0] if verified else ''}", flush=True)
    server.stop()
    ok, output = server.audit_verify()
    if not ok:
        FAILURES.add(f"final kagi audit verify: {output}")
    if server.log_has_panic():
        FAILURES.add(f"kagi panicked: see {server.log_path}")
    return {
        "rounds": args.iterations,
        "kills": args.iterations,
        "acknowledged": model.acks,
        "keys": len(model.keys),
        "ciphertexts": len(model.ciphertexts),
        "refusals": refusals,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- full disk -------------------------------------------------------------------------------


def fill(path):
    """Writes zeros to `path` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        for size in (64 * 1024, 4096, 512, 1):
            while True:
                try:
                    f.write(chunk[:size])
                    written += size
                except OSError:
                    break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return written


def full_disk(args):
    mount = args.full_disk
    data = os.path.join(mount, "data")
    server = Server(args.kagi, args.work, data, "full")
    server.run("init")
    server.start()
    kms = server.client()
    model = Model(os.path.join(args.work, "full-acks.jsonl"))
    keys = []
    for _ in range(3):
        key_id = kms.create_key(Description="before the disk filled")["KeyMetadata"]["KeyId"]
        keys.append(key_id)
        model.keys[key_id] = Key(key_id, "AWS_KMS")
        for n in range(5):
            plaintext = os.urandom(64)
            context = {"n": str(n)}
            blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext,
                               EncryptionContext=context)["CiphertextBlob"]
            model.ciphertexts.append((key_id, blob, plaintext, context))
    filler = os.path.join(mount, "filler")
    filled = fill(filler)
    outcomes = {}
    ops = [
        ("CreateKey", lambda: kms.create_key(Description="on a full disk")),
        ("Encrypt", lambda: kms.encrypt(KeyId=keys[0], Plaintext=b"x" * 64)),
        ("RotateKeyOnDemand", lambda: kms.rotate_key_on_demand(KeyId=keys[1])),
        ("Decrypt", lambda: kms.decrypt(CiphertextBlob=model.ciphertexts[0][1],
                                        EncryptionContext=model.ciphertexts[0][3])),
        ("DisableKey", lambda: kms.disable_key(KeyId=keys[2])),
    ]
    for _ in range(3):
        for name, op in ops:
            try:
                op()
                outcomes.setdefault(name, []).append("ok")
            except ClientError as error:
                status = error.response["ResponseMetadata"]["HTTPStatusCode"]
                code = error.response["Error"]["Code"]
                message = error.response["Error"].get("Message", "")
                outcomes.setdefault(name, []).append(f"{status} {code}: {message}")
                if not message:
                    FAILURES.add(f"full disk: {name} failed without a message")
            except botocore.exceptions.BotoCoreError as error:
                FAILURES.add(f"full disk: {name} got no answer: {error}")
                outcomes.setdefault(name, []).append(f"no answer: {error}")
    if not server.alive():
        FAILURES.add("full disk: kagi serve died")
        server.start()
        kms = server.client()
    # What succeeded on the full disk is acknowledged too.
    os.remove(filler)
    end = time.monotonic() + 30
    resumed = None
    while time.monotonic() < end:
        try:
            kms.encrypt(KeyId=keys[0], Plaintext=b"after")
            resumed = time.monotonic()
            break
        except ClientError:
            time.sleep(0.2)
    if resumed is None:
        FAILURES.add("full disk: service did not resume within 30 s of freeing space")
    disabled = [o for o in outcomes.get("DisableKey", []) if o == "ok"]
    if disabled:
        model.keys[keys[2]].state = "Disabled"
    elif model.keys[keys[2]].state == "Enabled":
        # DisableKey was refused every time; the key must still be enabled.
        pass
    check_keys(kms, model, model.keys.values())
    check_ciphertexts(kms, model, model.ciphertexts)
    server.stop()
    ok, output = server.audit_verify()
    if not ok:
        FAILURES.add(f"full disk: kagi audit verify: {output}")
    server.start()
    kms = server.client()
    check_keys(kms, model, model.keys.values())
    check_ciphertexts(kms, model, model.ciphertexts)
    server.stop()
    if server.log_has_panic():
        FAILURES.add(f"full disk: kagi panicked: see {server.log_path}")
    return {"filled_bytes": filled, "outcomes": outcomes, "audit": output.splitlines()[:1]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kagi", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--min-run", type=float, default=0.2)
    parser.add_argument("--max-run", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--full-disk", help="a mounted, empty, small file system")
    args = parser.parse_args()
    print(f"seed {args.seed}", flush=True)
    summary = {}
    if args.iterations > 0:
        summary["kill_loop"] = kill_loop(args)
    if args.full_disk:
        summary["full_disk"] = full_disk(args)
    summary["failures"] = FAILURES.items
    print(json.dumps(summary, indent=2))
    sys.exit(1 if FAILURES.items else 0)


if __name__ == "__main__":
    main()
