/* A minimal Windows service for the restart_service tests: each time the SCM starts it, it
 * appends its process id to the file named by its first argument (before it reports RUNNING,
 * so a test that sees RUNNING finds the line), then runs until the SCM asks it to stop.
 * Cross-built with mingw-w64 by tests/CMakeLists.txt; registered with `sc create`. */
#include <stdio.h>
#include <wchar.h>
#include <windows.h>

static SERVICE_STATUS_HANDLE status_handle;
static SERVICE_STATUS status;
static HANDLE stop_event;
static wchar_t starts_file[MAX_PATH];

static void report(DWORD state) {
  status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
  status.dwCurrentState = state;
  status.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP : 0;
  status.dwWin32ExitCode = NO_ERROR;
  SetServiceStatus(status_handle, &status);
}

static DWORD WINAPI control(DWORD code, DWORD type, void* data, void* context) {
  (void)type, (void)data, (void)context;
  if (code == SERVICE_CONTROL_STOP) {
    report(SERVICE_STOP_PENDING);
    SetEvent(stop_event);
    return NO_ERROR;
  }
  return code == SERVICE_CONTROL_INTERROGATE ? NO_ERROR : ERROR_CALL_NOT_IMPLEMENTED;
}

static void WINAPI service_main(DWORD argc, wchar_t** argv) {
  (void)argc, (void)argv;
  status_handle = RegisterServiceCtrlHandlerExW(L"TocsinProbeSvc", control, NULL);
  if (!status_handle) return;
  stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
  report(SERVICE_START_PENDING);
  FILE* f = _wfopen(starts_file, L"ab"); /* "\n", not "\r\n" */
  if (f) {
    fprintf(f, "%lu\n", (unsigned long)GetCurrentProcessId());
    fclose(f);
  }
  report(SERVICE_RUNNING);
  WaitForSingleObject(stop_event, INFINITE);
  report(SERVICE_STOPPED);
}

int wmain(int argc, wchar_t** argv) {
  if (argc < 2) {
    fputs("usage: probe-service STARTS_FILE (run by the Service Control Manager)\n", stderr);
    return 2;
  }
  wcsncpy(starts_file, argv[1], MAX_PATH - 1);
  SERVICE_TABLE_ENTRYW table[] = {{L"TocsinProbeSvc", service_main}, {NULL, NULL}};
  return StartServiceCtrlDispatcherW(table) ? 0 : 1;
}
