// The service's API key, where its operator set keys (service/auth.py): asked for once, at the
// first 401, and kept in sessionStorage, so for this tab only (closing it forgets the key).
// Every request of the page goes through `fetchWithKey` (api.js).

const STORAGE = "mnist-steps-api-key";

let asking = null; // the one question in progress: requests refused meanwhile wait for it

function storedKey() {
  return sessionStorage.getItem(STORAGE);
}

function withKey(init, key) {
  if (!key) return init;
  return { ...init, headers: { ...(init.headers || {}), authorization: `Bearer ${key}` } };
}

async function askForKey(refused) {
  let detail = "this service needs an API key";
  try {
    detail = (await refused.json()).detail ?? detail;
  } catch {
    // not JSON: keep the plain words
  }
  const key = window.prompt(`${detail}\n\nAPI key (kept for this tab only):`);
  if (!key || !key.trim()) return false;
  sessionStorage.setItem(STORAGE, key.trim());
  return true;
}

// fetch(), with the key if one is kept; on a 401, ask for one (once for all the page's
// requests) and send again. A cancelled question leaves the 401 to the caller.
export async function fetchWithKey(path, init = {}) {
  for (let tries = 0; ; tries++) {
    const sent = storedKey();
    const response = await fetch(path, withKey(init, sent));
    if (response.status !== 401 || tries === 3) return response;
    if (storedKey() !== sent) continue; // another request's question gave a new key meanwhile
    asking ??= askForKey(response).finally(() => {
      asking = null;
    });
    if (!(await asking) && storedKey() === sent) return response;
  }
}
