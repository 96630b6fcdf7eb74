"""The dashboard in a real headless Chromium, against a live `taskrunner serve`.

Logs in with an API key, sees a submitted task appear in the list, opens it, sees the state
machine with the current state and log lines arriving while it runs, cancels a second task
and sees `cancelled`; checks that no cookie, a forged cookie and a cancel without the CSRF
token are refused. Writes a screenshot of the task page to docs/dashboard-task.png.

Usage: python3 tests/browser/dashboard.py PATH/TO/taskrunner
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

KEY = "browser-test-key"
ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, headers=None):
    request = urllib.request.Request(base + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def submit(base, task_id, task_file):
    body = {
        "task_id": task_id,
        "task_file_name": task_file,
        "worker_config": {"worker_size": "X-Small", "shared_secrets": []},
        "callback_url": base + "/sample-task-runner-callback",
        "callback_url_token": "never-shown-callback-token",
    }
    status, text = call(base, "POST", "/task-runner", json.dumps(body).encode(),
                        {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    assert status == 202, (status, text)


def main():
    binary = sys.argv[1]
    work = Path(tempfile.mkdtemp(prefix="tr-browser-"))
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "count.sh").write_text(
        'for i in $(seq 1 12); do echo "counting line $i"; sleep 0.7; done\n')
    (tasks / "sleep.sh").write_text('echo "sleeping"; sleep 300\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TASKRUNNER_API_KEY=KEY, RUST_LOG="warn")
    server = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "data"),
         "--tasks-dir", str(tasks)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
    driver = None
    try:
        for _ in range(200):
            try:
                if call(base, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("taskrunner serve did not answer /healthz; see " + str(work / "serve.log"))

        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={work / 'chromium-profile'}", "--window-size=1400,1250"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                                  options=options)
        wait = WebDriverWait(driver, 30)

        # No cookie: the login page.
        driver.get(base + "/ui/")
        wait.until(EC.presence_of_element_located((By.ID, "login-page")))
        print("ok: without a session cookie /ui/ shows the login page")

        # A wrong key is refused; the right one opens the task list.
        driver.find_element(By.ID, "api_key").send_keys("not-the-key")
        driver.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.ID, "login-error")))
        driver.find_element(By.ID, "api_key").send_keys(KEY)
        driver.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.ID, "task-list-page")))
        cookie = driver.get_cookie("taskrunner_session")
        assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
        assert KEY not in cookie["value"]
        print("ok: login sets an HttpOnly, SameSite=Strict session cookie without the key")

        # A submitted task appears in the list, which refreshes by itself.
        submit(base, "count-1", "count.sh")
        link = wait.until(EC.element_to_be_clickable((By.LINK_TEXT, "count-1")))
        print("ok: the submitted task appears in the list")
        link.click()

        # The task page: the graph with the current state, log lines arriving while it runs.
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#graph svg [data-state].current")))
        wait.until(lambda d: "counting line 2" in d.find_element(By.ID, "log").text)
        status = driver.find_element(By.ID, "task-status").text
        assert status == "running", status
        current = driver.find_element(By.CSS_SELECTOR, "#graph [data-state].current").get_attribute("data-state")
        print(f"ok: the graph shows the current state ({current}) and log lines arrive while running")
        wait.until(lambda d: "counting line 6" in d.find_element(By.ID, "log").text)
        assert driver.find_element(By.ID, "task-status").text == "running"
        print("ok: more log lines arrive while the task still runs")

        wait.until(lambda d: d.find_element(By.ID, "task-status").text == "succeeded")
        wait.until(lambda d: "delivered" in d.find_element(By.ID, "callbacks").text)
        assert "msg_count-1" in driver.find_element(By.ID, "callbacks").text
        assert "counting line 12" in driver.find_element(By.ID, "log").text
        taken = driver.find_elements(By.CSS_SELECTOR, '#graph [data-edge="FinishAndCallback>Done"].taken')
        assert taken, "the path taken ends FinishAndCallback -> Done"
        page = driver.page_source
        assert "never-shown-callback-token" not in page and KEY not in page
        time.sleep(1.2)  # one more refresh, so the screenshot shows the final poll
        out = ROOT / "docs" / "dashboard-task.png"
        driver.save_screenshot(str(out))
        print(f"ok: succeeded, callback delivered, path highlighted; screenshot: {out}")

        # Cancel a second task from its page.
        submit(base, "sleep-1", "sleep.sh")
        driver.get(base + "/ui/tasks/sleep-1")
        wait.until(lambda d: "sleeping" in d.find_element(By.ID, "log").text)
        cancel = wait.until(EC.element_to_be_clickable((By.ID, "cancel")))
        cancel.click()
        wait.until(lambda d: d.find_element(By.ID, "task-status").text == "cancelled")
        print("ok: Cancel ends the second task as cancelled")

        # A cancel without the CSRF token, with a valid session, is refused.
        submit(base, "sleep-2", "sleep.sh")
        session = "taskrunner_session=" + cookie["value"]
        status, text = call(base, "POST", "/ui/api/tasks/sleep-2/cancel", b"", {"Cookie": session})
        assert status == 403 and "CSRF" in text, (status, text)
        print("ok: a cancel without the CSRF token is refused (403)")
        status, _ = call(base, "DELETE", "/task-runner/sleep-2", None, {"Authorization": "Bearer " + KEY})
        assert status == 200

        # A forged cookie is refused: the browser is sent to the login page.
        driver.delete_all_cookies()
        driver.add_cookie({"name": "taskrunner_session", "value": cookie["value"][:-4] + "AAAA", "path": "/ui"})
        driver.get(base + "/ui/")
        wait.until(EC.presence_of_element_located((By.ID, "login-page")))
        status, _ = call(base, "GET", "/ui/api/tasks", None,
                         {"Cookie": "taskrunner_session=" + cookie["value"][:-4] + "AAAA"})
        assert status == 401, status
        print("ok: a forged session cookie is refused")
        print("dashboard browser test: all checks passed")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
