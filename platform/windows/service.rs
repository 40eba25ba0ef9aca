//! reseedfs as a Windows service (crate `windows-service`): `reseedfs service install`
//! registers it (automatic start, LocalSystem, `reseedfs service run --config ...`) and
//! the event source; the Service Control Manager then runs the mount as `reseedfs mount`
//! would, and its Stop or a shutdown unmounts as Ctrl-C does in a console (see
//! [`super::stop`]). The mount reports Running once the databases are reachable
//! ([`report_running`], from the daemon's announce) and StopPending when it stops.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

/// The service's name.
pub const SERVICE_NAME: &str = "reseedfs";

/// The status handle while running as the service; unset in a console.
static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();
/// The config the service mounts (set before the dispatcher starts).
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

fn set_state(state: ServiceState, exit: u32) {
    if let Some(h) = STATUS.get() {
        let accepted = if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        };
        let _ = h.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: 0,
            wait_hint: Duration::from_secs(30),
            process_id: None,
        });
    }
}

/// The databases are reachable: Running (nothing in a console).
pub fn report_running() {
    set_state(ServiceState::Running, 0);
}

/// The mount is stopping: StopPending (nothing in a console).
pub fn report_stopping() {
    set_state(ServiceState::StopPending, 0);
}

windows_service::define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    let handler = |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            super::stop::request_stop(15);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("cannot register the service control handler: {e}");
            return;
        }
    };
    let _ = STATUS.set(handle);
    set_state(ServiceState::StartPending, 0);
    let exit = match CONFIG.get() {
        Some(path) => match crate::daemon::run_config_file(path) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("reseedfs service: {e:#}");
                1
            }
        },
        None => 1,
    };
    set_state(ServiceState::Stopped, exit);
}

/// Runs the mount of `config` as the service (called by the Service Control Manager
/// through `reseedfs service run`).
pub fn run(config: &Path) -> anyhow::Result<()> {
    let _ = CONFIG.set(config.to_owned());
    windows_service::service_dispatcher::start(SERVICE_NAME, ffi_service_main)
        .context("start the service dispatcher (`reseedfs service run` is for the Service Control Manager; use `reseedfs mount` in a console)")
}

/// Registers the service (automatic start, LocalSystem) for `config`.
pub fn install(config: &Path) -> anyhow::Result<()> {
    let manager =
        ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CREATE_SERVICE)
            .context("open the Service Control Manager (run as Administrator)")?;
    let exe = std::env::current_exe().context("find the reseedfs executable")?;
    let config =
        std::path::absolute(config).with_context(|| format!("resolve {}", config.display()))?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: "reseedfs (database copies over a pool of volumes)".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config.into_os_string(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    manager
        .create_service(&info, ServiceAccess::QUERY_STATUS)
        .context("create the reseedfs service")?;
    Ok(())
}

/// Removes the service (after it stopped).
pub fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("open the Service Control Manager (run as Administrator)")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::DELETE | ServiceAccess::QUERY_STATUS,
        )
        .context("open the reseedfs service")?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        anyhow::bail!(
            "the reseedfs service is running: stop the databases, then `sc stop reseedfs`, then uninstall"
        );
    }
    service.delete().context("delete the reseedfs service")?;
    Ok(())
}
