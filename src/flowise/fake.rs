//! An in-memory Flowise for unit tests of the controller's steps. It keeps the quirks that
//! matter to the controller (ids are server-generated, PUT merges, delete of an unknown id is
//! "already gone"); the integration tests use the real Flowise.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ChatflowWrite, Deletion, FlowiseApi, FlowiseChatflow, FlowiseError};

#[derive(Default)]
pub(crate) struct FakeFlowise {
    chatflows: Mutex<Vec<FlowiseChatflow>>,
    next_id: AtomicUsize,
    down: AtomicBool,
    /// Listings do not answer until released ([`FakeFlowise::set_hung`]).
    hung: AtomicBool,
    released: tokio::sync::Notify,
    /// Creates go unanswered (a timeout) and land only when [`FakeFlowise::land`] says.
    late: AtomicBool,
    landing: Mutex<Vec<FlowiseChatflow>>,
    pub(crate) creates: AtomicUsize,
    pub(crate) updates: AtomicUsize,
}

impl FakeFlowise {
    /// Adds a chatflow as if someone created it in the UI; returns its id.
    pub(crate) fn insert(&self, name: &str, flow_type: &str, category: Option<&str>) -> String {
        let mut chatflow = self.blank();
        chatflow.name = name.into();
        chatflow.flow_type = flow_type.into();
        chatflow.category = category.map(str::to_string);
        let id = chatflow.id.clone();
        self.lock().push(chatflow);
        id
    }

    fn blank(&self) -> FlowiseChatflow {
        FlowiseChatflow {
            id: self.new_id(),
            name: String::new(),
            flow_type: String::new(),
            flow_data: r#"{"nodes":[],"edges":[]}"#.into(),
            deployed: None,
            is_public: None,
            apikeyid: None,
            category: None,
            created_date: None,
            updated_date: None,
        }
    }

    /// Every chatflow now held.
    pub(crate) fn all(&self) -> Vec<FlowiseChatflow> {
        self.lock().clone()
    }

    /// From now on every call fails as if Flowise were down (503).
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// From now on listings do not answer (a Flowise that accepts and hangs); unhung, the
    /// listings waiting answer what Flowise held when they were asked.
    pub(crate) fn set_hung(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
        if !hung {
            self.released.notify_waiters();
        }
    }

    /// From now on creates time out, and what they create lands at the next [`Self::land`].
    pub(crate) fn set_late(&self, late: bool) {
        self.late.store(late, Ordering::SeqCst);
    }

    /// The creates that timed out are committed now.
    pub(crate) fn land(&self) {
        let landed = std::mem::take(&mut *self.landing.lock().unwrap_or_else(|p| p.into_inner()));
        self.lock().extend(landed);
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FlowiseChatflow>> {
        self.chatflows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_up(&self) -> Result<(), FlowiseError> {
        if self.down.load(Ordering::SeqCst) {
            Err(FlowiseError::Status {
                status: 503,
                message: "down".into(),
            })
        } else {
            Ok(())
        }
    }
}

fn merge(target: &mut FlowiseChatflow, write: &ChatflowWrite) {
    if let Some(name) = &write.name {
        target.name = name.clone();
    }
    if let Some(flow_type) = &write.flow_type {
        target.flow_type = flow_type.clone();
    }
    if let Some(flow_data) = &write.flow_data {
        target.flow_data = flow_data.clone();
    }
    if let Some(deployed) = write.deployed {
        target.deployed = Some(deployed);
    }
    if let Some(category) = &write.category {
        target.category = Some(category.clone());
    }
}

impl FlowiseApi for FakeFlowise {
    fn list(&self) -> BoxFuture<'_, Result<Vec<FlowiseChatflow>, FlowiseError>> {
        let result = self.check_up().map(|()| self.all());
        async move {
            loop {
                let released = self.released.notified();
                let mut released = std::pin::pin!(released);
                released.as_mut().enable();
                if !self.hung.load(Ordering::SeqCst) {
                    return result;
                }
                released.await;
            }
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowiseChatflow>, FlowiseError>> {
        let result = self
            .check_up()
            .map(|()| self.lock().iter().find(|c| c.id == id).cloned());
        async move { result }.boxed()
    }

    fn create<'a>(
        &'a self,
        chatflow: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        let result = self.check_up().map(|()| {
            self.creates.fetch_add(1, Ordering::SeqCst);
            let mut created = self.blank();
            merge(&mut created, chatflow);
            created
        });
        let result = match result {
            Ok(created) if self.late.load(Ordering::SeqCst) => {
                let mut landing = self.landing.lock().unwrap_or_else(|p| p.into_inner());
                landing.push(created);
                Err(FlowiseError::Timeout(std::time::Duration::from_secs(30)))
            }
            Ok(created) => {
                self.lock().push(created.clone());
                Ok(created)
            }
            Err(error) => Err(error),
        };
        async move { result }.boxed()
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        changes: &'a ChatflowWrite,
    ) -> BoxFuture<'a, Result<FlowiseChatflow, FlowiseError>> {
        let result = self.check_up().and_then(|()| {
            self.updates.fetch_add(1, Ordering::SeqCst);
            let mut chatflows = self.lock();
            match chatflows.iter_mut().find(|c| c.id == id) {
                Some(target) => {
                    merge(target, changes);
                    Ok(target.clone())
                }
                None => Err(FlowiseError::Status {
                    status: 404,
                    message: format!("Chatflow {id} not found in the database!"),
                }),
            }
        });
        async move { result }.boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion, FlowiseError>> {
        let result = self.check_up().map(|()| {
            let mut chatflows = self.lock();
            let before = chatflows.len();
            chatflows.retain(|c| c.id != id);
            if chatflows.len() < before {
                Deletion::Deleted
            } else {
                Deletion::AlreadyGone
            }
        });
        async move { result }.boxed()
    }
}
