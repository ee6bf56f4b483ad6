// The official OpenAI Node SDK against a real openft server, for the calls whose client code differs from
// Python's. Driven by tests/e2e/test_node_sdk.py: argv[2] is a JSON plan {baseURL, apiKey, checks: [...]};
// every check's result is printed as one JSON object on stdout; any error exits non-zero with its message.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import OpenAI, { toFile } from "openai";

const plan = JSON.parse(process.argv[2]);
const client = (apiKey) => new OpenAI({ baseURL: plan.baseURL, apiKey: apiKey ?? plan.apiKey, maxRetries: 0 });

async function status(promise) {
  try {
    await promise;
    return 200;
  } catch (error) {
    if (error instanceof OpenAI.APIError) return error.status;
    throw error;
  }
}

const checks = {
  // share a checkpoint with a project, use it from that project, list, revoke
  async permissions({ checkpoint, projectId, projectKey }) {
    // the Node SDK sends these (admin-only at OpenAI) with `adminAPIKey`: openft takes the owner's key there
    const owner = new OpenAI({ baseURL: plan.baseURL, adminAPIKey: plan.apiKey, maxRetries: 0 });
    const granted = await owner.fineTuning.checkpoints.permissions.create(checkpoint, { project_ids: [projectId] });
    const chat = () =>
      client(projectKey).chat.completions.create({
        model: checkpoint,
        messages: [{ role: "user", content: "Zorblax?" }],
        max_tokens: 2,
      });
    const whileGranted = await status(chat());
    const listed = [];
    for await (const permission of owner.fineTuning.checkpoints.permissions.list(checkpoint, { limit: 1 })) {
      listed.push(permission.id);
    }
    const deleted = await owner.fineTuning.checkpoints.permissions.delete(granted.data[0].id, {
      fine_tuned_model_checkpoint: checkpoint,
    });
    return { granted: granted.data, whileGranted, listed, deleted, afterRevoke: await status(chat()) };
  },

  // a file in several parts through the Uploads API (Node has no upload_file_chunked helper)
  async upload({ path, partSize, filename }) {
    const bytes = readFileSync(path);
    const api = client();
    const upload = await api.uploads.create({ bytes: bytes.length, filename, mime_type: "text/jsonl", purpose: "fine-tune" });
    const partIds = [];
    for (let start = 0; start < bytes.length; start += partSize) {
      const part = await api.uploads.parts.create(upload.id, {
        data: await toFile(bytes.subarray(start, start + partSize), "part"),
      });
      partIds.push(part.id);
    }
    const md5 = createHash("md5").update(bytes).digest("hex");
    const done = await api.uploads.complete(upload.id, { part_ids: partIds, md5 });
    const content = Buffer.from(await (await api.files.content(done.file.id)).arrayBuffer());
    return { status: done.status, file: done.file, partIds, sameBytes: content.equals(bytes) };
  },

  // verify a delivered webhook as a Node receiver would
  async webhook({ body, headers, secret }) {
    const event = await client().webhooks.unwrap(body, headers, secret);
    let tampered;
    try {
      await client().webhooks.unwrap(body.replace("ftjob-", "ftjob-x"), headers, secret);
      tampered = "accepted";
    } catch (error) {
      tampered = error.constructor.name;
    }
    return { event, tampered };
  },
};

const results = [];
for (const { name, ...args } of plan.checks) {
  results.push({ name, result: await checks[name](args) });
}
console.log(JSON.stringify(results));
